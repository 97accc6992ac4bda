"""The linear probe's solvers: scikit-learn's L-BFGS against the torch L-BFGS and minibatch Adam paths.

:mod:`pipeline.evaluation.probe_solver` replaced scikit-learn's ``LogisticRegression`` (one
core, float32 features, L-BFGS) in the transfer stage's probe; this measures what that buys
on features of realistic shape and how far each solver's fit is from the other's:

* features: random but structured (:func:`structured_features`: class means in a 64-d latent
  space, a random projection to D dims, ReLU, noise: correlated, non-negative, like pooled CNN
  features), standardized once; N training rows, 5,000 val rows, K classes. Default shapes
  20,000 x 512 (100 classes) and 50,000 x 1,024 (1,000 classes); ``--quick``: 5,000 x 256
  (50 classes); ``--opt shapes=N:D:K,...``;
* one fit per solver at each C of ``--opt Cs`` (default 0.001,0.1: strongly and weakly
  regularized), tolerance ``--opt tol`` (default 1e-3, the transfer stage's ``probe_tol``):
  scikit-learn (BLAS limited to 1 thread, as the old probe ran), torch L-BFGS and torch
  SGD (:class:`pipeline.evaluation.probe_solver.SGDSettings` defaults) with 1 torch thread,
  and torch L-BFGS with all of this process's cores;
* per fit: wall and CPU seconds (on a shared machine the CPU seconds of the 1-thread fits
  vary less), iterations (epochs for SGD), val top-1, and agreement of val predictions with
  scikit-learn's; per SGD fit, seconds per epoch and that per 1M rows, scaled by D x K to
  ImageNet-1k's probe (3,584 features, layer2-4 of a ResNeXt-101, 1,000 classes).

Not a test: nothing asserts. The CPU capability (``torch.backends.cpu.get_cpu_capability()``)
is in each row's ``details``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict

from benchmarks.common import Context, Timer, log, main, median, result

IMAGENET_D, IMAGENET_K = 3584, 1000


def structured_features(n: int, d: int, k: int, seed: int = 0, latent: int = 64, sep: float = 0.6):
    """(float32 (n, d) features, int64 (n,) labels in ``[0, k)``), seeded.

    Each row: its class's mean in a ``latent``-d space (normal, scale ``sep``) plus normal noise
    (scale 1.5), projected to ``d`` dims by a random matrix, ReLU(. + 0.3), plus normal noise (0.1).
    """
    import numpy as np

    r = np.random.default_rng(seed)
    mu = r.normal(size=(k, latent)) * sep
    proj = (r.normal(size=(latent, d)) / np.sqrt(latent)).astype(np.float32)
    y = r.integers(0, k, n)
    z = (mu[y] + 1.5 * r.normal(size=(n, latent))).astype(np.float32)
    x = np.maximum(z @ proj + 0.3, 0) + 0.1 * r.standard_normal((n, d), dtype=np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def _shapes(ctx: Context) -> list[tuple[int, int, int]]:
    spec = ctx.options.get("shapes", "5000:256:50" if ctx.quick else "20000:512:100,50000:1024:1000")
    return [tuple(int(v) for v in s.split(":")) for s in spec.split(",")]  # type: ignore[misc]


def run(ctx: Context) -> list[dict]:
    import numpy as np
    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from pipeline.evaluation.probe_solver import SGDSettings, Standardizer, lbfgs_fit, load_standardized, sgd_fit
    from pipeline.system import available_cores

    cpu = torch.device("cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    cores = available_cores()
    Cs = [float(c) for c in ctx.options.get("Cs", "0.001,0.1").split(",")]
    tol = float(ctx.options.get("tol", "1e-3"))
    settings = SGDSettings()
    rows = []
    for n, d, k in _shapes(ctx):
        x, y = structured_features(n + 5000, d, k)
        std = Standardizer.fit(x[:n], None, cpu)
        xs = load_standardized(x[:n], None, std, cpu)
        xv, yv = load_standardized(x[n:], None, std, cpu).numpy(), y[n:]
        lbfgs_fit(xs[:256], torch.from_numpy(y[:256]), k, 1.0, max_iter=2, tol=tol)  # warm-up: first-call costs untimed
        for C in Cs:
            fits: dict[str, list[dict]] = {"sklearn": [], "torch_lbfgs_1t": [], "torch_lbfgs_all": [], "torch_sgd_1t": []}
            for rep in range(ctx.reps):
                with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings(), Timer() as t:
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf = LogisticRegression(C=C, max_iter=1000, tol=tol).fit(xs.numpy(), y[:n])
                ref = clf.predict(xv)
                top1, its = float((ref == yv).mean()), int(clf.n_iter_[0])
                fits["sklearn"].append({"seconds": t.seconds, "cpu_seconds": t.cpu, "iterations": its, "top1": top1})
                for name, threads in (("torch_lbfgs_1t", 1), ("torch_lbfgs_all", cores)):
                    torch.set_num_threads(threads)
                    with Timer() as t:
                        W, b, it = lbfgs_fit(xs, torch.from_numpy(y[:n]), k, C, max_iter=1000, tol=tol)
                    pred = (xv @ W.T + b).argmax(1)
                    fits[name].append(
                        {
                            "seconds": t.seconds,
                            "cpu_seconds": t.cpu,
                            "iterations": it,
                            "top1": float((pred == yv).mean()),
                            "agreement": float((pred == ref).mean()),
                        }
                    )
                torch.set_num_threads(1)
                with Timer() as t:
                    W, b, ep = sgd_fit(x, np.arange(n), y[:n], std, k, C, settings=settings, seed=rep, device=cpu)
                pred = (xv @ W.T + b).argmax(1)
                fits["torch_sgd_1t"].append(
                    {
                        "seconds": t.seconds,
                        "cpu_seconds": t.cpu,
                        "iterations": ep,
                        "top1": float((pred == yv).mean()),
                        "agreement": float((pred == ref).mean()),
                    }
                )
                log(
                    f"probe_solver {n}x{d} K={k} C={C} rep {rep}: "
                    + ", ".join(f"{m} {v[-1]['seconds']:.1f} s top-1 {v[-1]['top1']:.4f}" for m, v in fits.items())
                )
            summary = {m: {key: median(f[key] for f in v) for key in v[0]} for m, v in fits.items()}
            sgd_epoch = summary["torch_sgd_1t"]["seconds"] / summary["torch_sgd_1t"]["iterations"]
            per_m = sgd_epoch * 1e6 / n
            sk, lb = summary["sklearn"]["seconds"], summary["torch_lbfgs_1t"]["seconds"]
            rows.append(
                result(
                    f"probe_solver_{n}x{d}_k{k}_C{C:g}",
                    ours=lb,
                    anchor=sk,
                    unit="s per fit",
                    goal="(reported)",
                    met=None,
                    title=f"one probe fit, {n:,} x {d} features, {k} classes, C={C:g}, tol {tol:g}",
                    ours_is="torch L-BFGS (pipeline.evaluation.probe_solver.lbfgs_fit), 1 thread",
                    anchor_is="scikit-learn LogisticRegression (L-BFGS), 1 BLAS thread",
                    details={
                        "cpu_capability": capability,
                        "cores": cores,
                        "fits": summary,
                        "sgd": {
                            "settings": asdict(settings),
                            "seconds_per_epoch": sgd_epoch,
                            "seconds_per_epoch_per_1M_rows": per_m,
                            "seconds_per_epoch_per_1M_rows_at_imagenet_D_K": per_m * (IMAGENET_D * IMAGENET_K) / (d * k),
                        },
                    },
                )
            )
    return rows


if __name__ == "__main__":
    main(run)
