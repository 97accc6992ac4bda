"""The linear probe's solvers: multinomial logistic regression in torch, full-batch L-BFGS or minibatch Adam.

The objective is scikit-learn's ``LogisticRegression(penalty="l2", C=C)`` (the reference the
tests compare against, ``tests/test_linear_probe.py``), written as a mean so that it is well scaled
at any N (the same minimizer; scikit-learn's L-BFGS path minimizes exactly this form,
``l2_reg_strength = 1 / (C * n_samples)`` in ``sklearn/linear_model/_logistic.py``)::

    f(W, b) = (1/N) sum_i CE(W x_i + b, y_i) + 1 / (2 N C) ||W||^2      (intercept b unpenalized)

over the classes present in the training labels (K of them): K logit vectors (the full
softmax parametrization, as scikit-learn's multinomial); with exactly 2 classes one logit vector
and the logits ``[0, w x + b]`` (scikit-learn's binary logistic regression, whose penalty differs
from the 2-class softmax's). Features are standardized first (:class:`Standardizer`: mean 0,
variance 1 per dimension, scikit-learn's ``StandardScaler``).

Two solvers (:func:`choose_solver` picks one for ``auto``):

* :func:`lbfgs_fit`: full-batch ``torch.optim.LBFGS`` (strong-Wolfe line search, history 10 as
  scipy's L-BFGS-B) on standardized features held on the device, stopping when the largest
  absolute gradient entry is <= ``tol`` (scipy's ``gtol``, as scikit-learn passes ``tol``) or after
  ``max_iter`` iterations; loss and gradient in row chunks (the N x K logits are never held whole);
* :func:`sgd_fit`: epochs of seeded minibatch Adam with cosine decay over rows read in blocks
  from an array that may be a ``numpy.memmap`` (features that do not fit the device or RAM),
  standardized per block on the device.

Both work on the rows this process holds: when a ``torch.distributed`` process group is
initialized, every rank passes its own shard of rows and the loss, gradients, counts,
standardization sums and held-out scores are summed over the ranks (all-reduce on the probe's
device, which must be one the group's backend reduces on: CUDA for NCCL), so every rank takes the
same steps; alone, the same code runs in one process.

Why ~480 lines (over the project's 450): the two solvers share the chunked loss/gradient, the
parameter init, the standardization, the block reads and the cross-rank sums kept private here; a
separate module for the SGD path would have to import five private helpers of this one (checked once the
sharded feature extraction landed, issue 24: every rank now calls both solvers on its own rows).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from pipeline.config import ProbeSolver

__all__ = [
    "SOLVERS",
    "LinearClassifier",
    "SGDSettings",
    "Standardizer",
    "choose_solver",
    "global_classes",
    "global_count",
    "holdout_scores",
    "lbfgs_bytes",
    "lbfgs_fit",
    "load_standardized",
    "memory_budget_bytes",
    "sgd_fit",
]

SOLVERS = tuple(s.value for s in ProbeSolver)  # the config's closed choice, one source
HISTORY = 10  # L-BFGS memory (scipy's L-BFGS-B default, which scikit-learn uses)
_LOGITS_BYTES = 64 << 20  # one chunk of logits (rows x K float32) in the loss and scoring loops
_BLOCK_BYTES = 256 << 20  # rows read from the feature array at once by the SGD path
_MAX_NLL = -math.log(np.finfo(np.float64).eps)  # scikit-learn's log_loss clips probabilities at float64 eps


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (a no-op in one process); returns ``t``."""
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _chunk_rows(width: int) -> int:
    """Rows per chunk so that a float32 (rows, width) block is about ``_LOGITS_BYTES``."""
    return max(1024, _LOGITS_BYTES // (4 * max(1, width)))


def _read(x: np.ndarray, rows: np.ndarray | None, sl: slice) -> np.ndarray:
    """Rows ``rows[sl]`` of ``x`` (all rows if ``rows`` is None) as float32; sorted rows read a memmap in order."""
    part = np.asarray(x[sl] if rows is None else x[rows[sl]], dtype=np.float32)
    return part if part.flags.writeable else part.copy()  # a read-only memmap's slice: torch wants its own


# --------------------------------------------------------------------------- standardization


@dataclass
class Standardizer:
    """Per-dimension mean and scale (float64 (D,)): scikit-learn's ``StandardScaler`` (population std, 1 where ~0)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, rows: np.ndarray | None, device: torch.device) -> Standardizer:
        """Statistics of ``x[rows]`` (all rows if None; over every rank's rows when distributed).

        Two passes in float64 (mean, then the centred squares), reading ``x`` (an array or a
        memmap, (N, D)) in chunks. Raises ValueError if no rank holds a row.
        """
        n_local = x.shape[0] if rows is None else len(rows)
        d = x.shape[1]
        step = _chunk_rows(d)
        acc = torch.zeros(d + 1, dtype=torch.float64, device=device)
        for sl in _chunks(n_local, step):
            part = torch.from_numpy(_read(x, rows, sl)).to(device, torch.float64)
            acc[:d] += part.sum(0)
            acc[d] += part.shape[0]
        _all_sum(acc)
        n = float(acc[d])
        if n == 0:
            raise ValueError("no feature rows to standardize")
        mean = acc[:d] / n
        sq = torch.zeros(d, dtype=torch.float64, device=device)
        for sl in _chunks(n_local, step):
            part = torch.from_numpy(_read(x, rows, sl)).to(device, torch.float64)
            sq += ((part - mean) ** 2).sum(0)
        _all_sum(sq)
        scale = torch.sqrt(sq / n).cpu().numpy()
        scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
        return cls(mean=mean.cpu().numpy(), scale=scale)

    def apply(self, part: torch.Tensor) -> torch.Tensor:
        """Standardized float32 copy of a float32 (n, D) tensor (on the tensor's device)."""
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=part.device)
        inv = torch.as_tensor(1.0 / self.scale, dtype=torch.float32, device=part.device)
        return (part - mean) * inv


def load_standardized(x: np.ndarray, rows: np.ndarray | None, std: Standardizer, device: torch.device) -> torch.Tensor:
    """``x[rows]`` standardized, float32 (n, D) on ``device`` (read and converted in chunks)."""
    n = x.shape[0] if rows is None else len(rows)
    out = torch.empty((n, x.shape[1]), dtype=torch.float32, device=device)
    for sl in _chunks(n, _chunk_rows(x.shape[1])):
        out[sl] = std.apply(torch.from_numpy(_read(x, rows, sl)).to(device))
    return out


# --------------------------------------------------------------------------- the fitted classifier


@dataclass
class LinearClassifier:
    """A fitted probe: standardization, then ``W x + b`` over the classes present in training.

    Attributes:
        std: the standardization the weights were fitted after.
        coef: float32 (K, D) weights, (1, D) with two classes (logits ``[0, w x + b]``).
        intercept: float32 (K,) (or (1,)).
        classes: int64 (K,) ascending labels the columns of :meth:`logits` stand for.
        n_iter: L-BFGS iterations, or SGD epochs.
        solver: ``"lbfgs"`` or ``"sgd"``.
        device: where :meth:`logits` computes unless told (the device the probe was fitted on).
    """

    std: Standardizer
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray
    n_iter: int = 0
    solver: str = "lbfgs"
    device: str = "cpu"

    @property
    def classes_(self) -> np.ndarray:  # scikit-learn's name, for callers written against it
        return self.classes

    def logits(self, x: np.ndarray, device: torch.device | None = None) -> np.ndarray:
        """Logits float64 (N, K) of raw features ``x`` (float32 (N, D), an array or a memmap), chunked."""
        dev = device or torch.device(self.device)
        W = torch.as_tensor(self.coef, device=dev)
        b = torch.as_tensor(self.intercept, device=dev)
        out = np.empty((x.shape[0], len(self.classes)), dtype=np.float64)
        for sl in _chunks(x.shape[0], _chunk_rows(max(x.shape[1], len(self.classes)))):
            z = _logits(self.std.apply(torch.from_numpy(_read(x, None, sl)).to(dev)), W, b)
            out[sl] = z.double().cpu().numpy()
        return out

    decision_function = logits


def _logits(xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, K) logits of standardized rows; one weight row = binary logistic regression, logits ``[0, z]``."""
    z = torch.addmm(b, xs, W.T)
    return torch.cat([torch.zeros_like(z), z], 1) if W.shape[0] == 1 else z


def _ce_grad(xs: torch.Tensor, yi: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64 scalar) and its gradient w.r.t. the logits (float32 (n, K or 1))."""
    z = torch.addmm(b, xs, W.T)
    if W.shape[0] == 1:  # binary: CE = softplus(z) - y z, dCE/dz = sigmoid(z) - y
        zz, yf = z[:, 0], yi.to(z.dtype)
        loss = (F.softplus(zz) - yf * zz).sum(dtype=torch.float64)
        return loss, (torch.sigmoid(zz) - yf)[:, None]
    loss = (torch.logsumexp(z, 1) - z.gather(1, yi[:, None])[:, 0]).sum(dtype=torch.float64)
    d = torch.softmax(z, 1)
    d[torch.arange(len(yi), device=d.device), yi] -= 1.0
    return loss, d


def global_count(n: int, device: torch.device) -> int:
    """``n`` summed over the ranks (``n`` itself in one process)."""
    return int(_all_sum(torch.tensor([n], dtype=torch.int64, device=device))[0])


def global_classes(y: np.ndarray, num_classes: int, device: torch.device) -> np.ndarray:
    """int64 ascending labels present in ``y`` on any rank (``y`` int64 in ``[0, num_classes)``)."""
    present = torch.zeros(num_classes, dtype=torch.int64)
    present[torch.from_numpy(np.unique(y).astype(np.int64))] = 1
    present = _all_sum(present.to(device)).cpu()
    return np.flatnonzero(present.numpy() > 0).astype(np.int64)


def _init_params(init: LinearClassifier | None, k_out: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if init is not None and init.coef.shape == (k_out, d):
        return (
            torch.tensor(init.coef, dtype=torch.float32, device=device),
            torch.tensor(init.intercept, dtype=torch.float32, device=device),
        )
    return torch.zeros(k_out, d, device=device), torch.zeros(k_out, device=device)


# --------------------------------------------------------------------------- full-batch L-BFGS


def lbfgs_fit(
    xs: torch.Tensor,
    yi: torch.Tensor,
    k_out: int,
    C: float,
    *,
    max_iter: int,
    tol: float,
    init: LinearClassifier | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimize the probe objective (module docstring) over standardized rows held on one device.

    Args:
        xs: float32 (n, D) standardized features of this rank; yi: int64 (n,) class positions in
            ``[0, K)`` (0/1 with two classes) on the same device.
        k_out: K, or 1 for two classes.
        C: scikit-learn's inverse regularization strength (on the summed loss; > 0).
        max_iter: L-BFGS iterations at most; tol: stop when max |gradient| <= tol (scipy's gtol).
        init: a previous solution with the same shape to start from (the regularization path).
    Returns:
        (coef float32 (k_out, D), intercept float32 (k_out,), iterations).
    """
    dev, d = xs.device, xs.shape[1]
    W, b = _init_params(init, k_out, d, dev)
    W.requires_grad_(True)
    b.requires_grad_(True)
    n = float(_all_sum(torch.tensor([float(len(yi))], dtype=torch.float64, device=dev))[0])
    lam = 1.0 / (C * n)
    step = _chunk_rows(max(k_out, 1))
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 50,  # iterations bound the fit, as scikit-learn's max_iter (scipy: up to 50 per line search)
        tolerance_grad=tol,
        tolerance_change=1e-12,
        history_size=HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        with torch.no_grad():
            loss = torch.zeros((), dtype=torch.float64, device=dev)
            gW, gb = torch.zeros_like(W), torch.zeros_like(b)
            for sl in _chunks(len(yi), step):
                part_loss, dz = _ce_grad(xs[sl], yi[sl], W, b)
                loss += part_loss
                gW.addmm_(dz.T, xs[sl])
                gb += dz.sum(0)
            flat = _all_sum(torch.cat([gW.flatten(), gb]))
            _all_sum(loss)
            W.grad = flat[: W.numel()].view_as(W) / n + lam * W
            b.grad = flat[W.numel() :] / n
            return loss / n + 0.5 * lam * (W.double() ** 2).sum()

    opt.step(closure)
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return W.detach().cpu().numpy(), b.detach().cpu().numpy(), n_iter


# --------------------------------------------------------------------------- minibatch Adam over a memmap


@dataclass(frozen=True)
class SGDSettings:
    """The minibatch solver's recipe (used when the features do not fit the L-BFGS budget, or when asked for).

    Adam (Kingma and Ba 2015) on the same objective, the L2 term in the gradient, the learning
    rate decayed to 0 by a cosine over all the steps of one fit; each epoch a seeded permutation
    of the rows. Chosen on standardized synthetic features (20,000 x 512, 100 classes, the
    ``probe_solver`` benchmark's generator) against the L-BFGS solution at tol 1e-5: with 3,000
    steps of 1,024 rows, top-1 within 0.1 points and the objective within 5e-4 for C = 0.001 and
    0.1 (lr 0.003 and 0.03 were worse; 600 steps left C = 0.1 2.5 points off). With weak
    regularization (C = 10 on those features) 600 steps stay far from the optimum: the first-order
    solver needs the steps that ``min_steps`` guarantees.
    """

    epochs: int = 30  # passes over the rows per fit (each C of the grid, and the refit)
    min_steps: int = 3000  # at least this many steps per fit: more epochs when the rows are few
    batch_size: int = 1024  # rows per step, summed over the ranks
    lr: float = 0.01  # Adam's peak learning rate


def _blocks(x: np.ndarray, rows: np.ndarray, order: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, float32 features) per block of ``order`` (positions into ``rows``), read sorted, one block ahead."""

    def read(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.sort(pos)
        return pos, _read(x, rows[pos], slice(None))

    with ThreadPoolExecutor(max_workers=1) as pool:
        starts = list(range(0, len(order), block))
        nxt = pool.submit(read, order[starts[0] : starts[0] + block]) if starts else None
        for i in range(len(starts)):
            assert nxt is not None
            cur = nxt.result()
            if i + 1 < len(starts):
                nxt = pool.submit(read, order[starts[i + 1] : starts[i + 1] + block])
            yield cur


def sgd_fit(
    x: np.ndarray,
    rows: np.ndarray,
    yi: np.ndarray,
    std: Standardizer,
    k_out: int,
    C: float,
    *,
    settings: SGDSettings,
    seed: int,
    device: torch.device,
    init: LinearClassifier | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimize the probe objective with minibatch Adam over rows ``rows`` of ``x`` (an array or a memmap).

    Args:
        x: float32 (N, D) features of this rank (read in blocks of about 256 MB, sorted row order
            within a block, the next block read while this one trains).
        rows: int64 sorted row numbers of ``x`` to train on; yi: int64 (len(rows),) class positions.
        std: standardization applied per block on ``device``.
        k_out, C, init: as :func:`lbfgs_fit`.
        settings: epochs (at least ``min_steps`` steps), batch size, learning rate.
        seed: seeds the row order (with the rank) and the within-block shuffle.
    Returns:
        (coef float32 (k_out, D), intercept float32 (k_out,), epochs).

    Every rank takes the same number of steps per epoch (its rows repeated to the largest
    rank's count); a step's gradient is summed over the ranks and divided by the global batch.
    """
    d = x.shape[1]
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    W, b = _init_params(init, k_out, d, device)
    W.requires_grad_(True)
    b.requires_grad_(True)
    n = float(_all_sum(torch.tensor([float(len(rows))], dtype=torch.float64, device=device))[0])
    if _distributed():
        n_max = torch.tensor([len(rows)], dtype=torch.int64, device=device)
        dist.all_reduce(n_max, op=dist.ReduceOp.MAX)
        n_most = int(n_max[0])
    else:
        n_most = len(rows)
    lam = 1.0 / (C * n)
    local_batch = max(1, settings.batch_size // world)
    steps = max(1, math.ceil(n_most / local_batch))
    epochs = max(settings.epochs, math.ceil(settings.min_steps / steps))
    total = steps * epochs
    opt = torch.optim.Adam([W, b], lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    rng = np.random.default_rng([seed, rank])
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + rank)
    block = max(local_batch, (_BLOCK_BYTES // (4 * d)) // local_batch * local_batch)
    y_dev = torch.from_numpy(np.asarray(yi, dtype=np.int64)).to(device)
    for _ in range(epochs):
        need = steps * local_batch
        order = np.concatenate([rng.permutation(len(rows)) for _ in range(math.ceil(need / max(1, len(rows))))])[:need]
        for pos, feats in _blocks(x, rows, order, block):
            perm = torch.randperm(len(pos), generator=gen).to(device)
            xb = std.apply(torch.from_numpy(feats).to(device))[perm]
            yb = y_dev[torch.from_numpy(pos).to(device)][perm]
            for sl in _chunks(len(pos), local_batch):
                with torch.no_grad():
                    _, dz = _ce_grad(xb[sl], yb[sl], W, b)
                    flat = torch.cat([(dz.T @ xb[sl]).flatten(), dz.sum(0), dz.new_tensor([dz.shape[0]])])
                    _all_sum(flat)
                    m = flat[-1]
                    W.grad = flat[: W.numel()].view_as(W) / m + lam * W
                    b.grad = flat[W.numel() : -1] / m
                opt.step()
                sched.step()
    return W.detach().cpu().numpy(), b.detach().cpu().numpy(), epochs


# --------------------------------------------------------------------------- held-out scores and solver choice


def holdout_scores(
    model: LinearClassifier, x: np.ndarray, rows: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[float, float]:
    """(top-1, mean log-loss) of ``model`` on rows ``rows`` of ``x`` with labels ``y`` (over every rank's rows).

    Labels absent from ``model.classes`` count as wrong with the clipped log-loss (scikit-learn's
    ``log_loss`` clips probabilities at float64 eps: at most about 36 nats per image).
    """
    pos = np.searchsorted(model.classes, y)
    known = (pos < len(model.classes)) & (model.classes[np.minimum(pos, len(model.classes) - 1)] == y)
    W = torch.as_tensor(model.coef, device=device)
    bb = torch.as_tensor(model.intercept, device=device)
    acc = torch.zeros(3, dtype=torch.float64, device=device)
    for sl in _chunks(len(rows), _chunk_rows(max(x.shape[1], len(model.classes)))):
        z = _logits(model.std.apply(torch.from_numpy(_read(x, rows, sl)).to(device)), W, bb).double()
        yk = torch.from_numpy(np.where(known[sl], pos[sl], 0)).to(device)
        ok = torch.from_numpy(known[sl]).to(device)
        nll = torch.logsumexp(z, 1) - z.gather(1, yk[:, None])[:, 0]
        nll = torch.where(ok, nll.clamp(max=_MAX_NLL), torch.full_like(nll, _MAX_NLL))
        acc[0] += ((z.argmax(1) == yk) & ok).sum()
        acc[1] += nll.sum()
        acc[2] += len(yk)
    _all_sum(acc)
    count = max(float(acc[2]), 1.0)
    return float(acc[0]) / count, float(acc[1]) / count


def lbfgs_bytes(n: int, d: int, k: int) -> int:
    """Bytes the L-BFGS path holds on its device for n x d features and k classes (float32).

    The standardized features, one chunk of logits and its gradient (3 x ``_LOGITS_BYTES`` at
    most), and the weights with their gradient, the 2 x ``HISTORY`` L-BFGS vectors and the
    line search's copies (about 2 * HISTORY + 6 weight-sized tensors).
    """
    return 4 * n * d + 3 * min(_LOGITS_BYTES, 4 * n * k) + 4 * (2 * HISTORY + 6) * k * (d + 1)


def memory_budget_bytes(device: torch.device) -> int:
    """The default L-BFGS budget: half the free memory of a CUDA device, else half the machine's physical memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): assume the features fit
        return 1 << 62


def choose_solver(requested: str, n: int, d: int, k: int, device: torch.device, budget_bytes: int | None) -> str:
    """``"lbfgs"`` or ``"sgd"``: ``auto`` is L-BFGS when :func:`lbfgs_bytes` fits ``budget_bytes``
    (None: :func:`memory_budget_bytes`). Raises ValueError for a solver not in :data:`SOLVERS`."""
    if requested not in SOLVERS:
        raise ValueError(f"unknown probe solver {requested!r} (one of {', '.join(SOLVERS)})")
    if requested != "auto":
        return requested
    budget = memory_budget_bytes(device) if budget_bytes is None else budget_bytes
    return "lbfgs" if lbfgs_bytes(n, d, k) <= budget else "sgd"
