"""ResNeXt models with timm's small interface, a registry, and trunk export.

The family is torchvision's ``ResNet(Bottleneck, layers, groups, width_per_group)``
(Xie et al. 2017), as used by Mahajan et al. 2018 (ResNeXt-101 32xCd, C in 4..48).
:class:`ResNeXt` subclasses torchvision's ``ResNet``, so ``state_dict`` keys and
shapes are exactly torchvision's, and adds the interface linear probing and
fine-tuning need (after timm's ``timm/models/resnet.py``):

- ``forward_features(x)``: ``(N, 3, H, W)`` float -> ``(N, num_features, H/32, W/32)``;
- ``forward_head(x, pre_logits=False)``: global average pool, then the classifier;
- ``reset_classifier(num_classes)``: a new head (0 -> ``nn.Identity``, for features);
- ``num_features``: channels of the trunk output (2048 for every model here).

Initialization follows Goyal et al. 2017 (sec. 5.1): the gamma of the last BN in
each residual block is zero (each block starts as the identity), the classifier
weights are N(0, 0.01^2) and its bias 0; convolutions keep torchvision's He init.

Every model is registered under one explicit name (timm maps
``ig_resnext101_32x{16,32,48}d`` to the 32x8d weights; here a name is one
architecture, and a duplicate name raises).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import Bottleneck, ResNet

from pipeline.io.atomic import atomic_path

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")  # the residual stages (res2..res5 in the paper's naming)
STAGE_WIDTHS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}  # their output channels (Bottleneck x 4)

__all__ = [
    "ResNeXt",
    "ResNeXtSpec",
    "create_model",
    "export_trunk",
    "list_models",
    "load_trunk",
    "register_model",
    "torchvision_resnet",
    "trunk_state_dict",
    "unwrap_model",
]


@dataclass(frozen=True)
class ResNeXtSpec:
    """The architecture of one registered model.

    Attributes:
        layers: bottleneck blocks per stage, e.g. ``(3, 4, 23, 3)`` for ResNeXt-101.
        groups: cardinality (grouped-convolution groups), 32 in Mahajan et al. 2018.
        width_per_group: channels per group in the first stage (the "d" of 32x8d).
        torchvision_name: the ``torchvision.models`` constructor with the same keys and
            shapes, if torchvision has one; else None (build it with
            :func:`torchvision_resnet`).
    """

    layers: tuple[int, int, int, int]
    groups: int
    width_per_group: int
    torchvision_name: str | None = None


@contextlib.contextmanager
def _frozen_bn_stats(block: nn.Module):
    """While an activation-checkpointed block recomputes its forward: BatchNorm momentum 0, so the running
    statistics, updated once by the original forward, are not updated again (the batch statistics used to
    normalize, hence the gradients, are unchanged)."""
    bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, tracked) in zip(bns, saved):
            m.momentum = mom
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _recompute_contexts(block: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """``torch.utils.checkpoint``'s ``context_fn``: nothing around the forward, :func:`_frozen_bn_stats` around the recompute."""
    return contextlib.nullcontext(), _frozen_bn_stats(block)


class ResNeXt(ResNet):
    """torchvision's ResNet with Bottleneck blocks plus timm's interface.

    Args:
        spec: the architecture.
        num_classes: classifier outputs; 0 gives an ``nn.Identity`` head (features).
        zero_init_residual: zero the gamma of each block's last BN (Goyal et al. 2017, sec. 5.1).
        fc_std: standard deviation of the classifier weight init (Goyal et al.: 0.01).

    Input ``(N, 3, H, W)`` float (any H, W >= 32; 224 px in the paper, 64 px on CPU here);
    ``forward`` returns ``(N, num_classes)`` logits, or ``(N, num_features)`` with a 0-class head.
    """

    def __init__(self, spec: ResNeXtSpec, num_classes: int = 1000, zero_init_residual: bool = True, fc_std: float = 0.01) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        super().__init__(
            Bottleneck,
            list(spec.layers),
            num_classes=max(num_classes, 1),
            zero_init_residual=zero_init_residual,
            groups=spec.groups,
            width_per_group=spec.width_per_group,
        )
        self.spec = spec
        self.model_name: str | None = None  # set by create_model
        self.num_features = 512 * Bottleneck.expansion
        self.fc_std = fc_std
        self.grad_checkpointing = False
        self.head_stages: tuple[str, ...] = ("layer4",)  # the pooled stage outputs the classifier reads
        self.reset_classifier(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per residual block (timm's method name): in training, each block keeps only its
        input and recomputes its activations in the backward pass (``torch.utils.checkpoint``, non-reentrant).

        Memory: activations per image drop from every layer's output to one tensor per block (measured in
        ``benchmarks.transfer_memory``: ~6x to ~10x less); time: one more forward of the trunk per step. Gradients
        and BatchNorm running statistics are those of the plain forward (the recomputation does not update the
        running statistics a second time: :func:`_frozen_bn_stats`).
        """
        self.grad_checkpointing = bool(enable)

    def _stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = checkpoint(block, x, use_reentrant=False, context_fn=functools.partial(_recompute_contexts, block))
        return x

    def reset_classifier(self, num_classes: int, stages: Sequence[str] | None = None) -> None:
        """Replace the head: a new ``Linear(D, num_classes)`` with weights N(0, fc_std^2) and bias 0 (Goyal et al. 2017,
        sec. 5.1), or ``nn.Identity`` for 0.

        ``stages`` (None: as before; the model starts with ``("layer4",)``, ``D = num_features``): the residual stages
        whose globally pooled outputs, concatenated, the classifier reads (:meth:`pooled_stage_features`; D = the sum
        of their widths, e.g. 3,584 for layer2-4). A fine-tuned network whose head reads the stages a linear probe
        reads can start from that probe (LP-FT, :mod:`pipeline.evaluation.head_init`).

        Raises:
            ValueError: if ``num_classes`` < 0, or an unknown stage name.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if stages is not None:
            if not stages or any(st not in STAGE_NAMES for st in stages):
                raise ValueError(f"stages must be a non-empty subset of {STAGE_NAMES}, got {list(stages)}")
            self.head_stages = tuple(st for st in STAGE_NAMES if st in stages)
        self.num_classes = num_classes
        if num_classes == 0:
            self.fc: nn.Module = nn.Identity()  # or an nn.Linear (below)
            return
        ref = self.conv1.weight  # the new head follows the trunk's device and dtype
        width = sum(STAGE_WIDTHS[st] for st in self.head_stages)
        fc = nn.Linear(width, num_classes, device=ref.device, dtype=ref.dtype)
        self.fc = fc
        nn.init.normal_(fc.weight, mean=0.0, std=self.fc_std)
        nn.init.zeros_(fc.bias)

    def get_classifier(self) -> nn.Module:
        """The head module (``nn.Linear`` or ``nn.Identity``)."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk: ``(N, 3, H, W)`` -> ``(N, num_features, ceil(H/32), ceil(W/32))`` (stride 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self._stage(self.layer1, x)
        x = self._stage(self.layer2, x)
        x = self._stage(self.layer3, x)
        return self._stage(self.layer4, x)

    def pooled_stage_features(self, x: torch.Tensor, stages: Sequence[str] = ("layer4",)) -> torch.Tensor:
        """Globally average-pooled outputs of residual stages, concatenated in network order.

        ``(N, 3, H, W)`` -> ``(N, sum of the stages' channels)`` (``layer1`` 256, ``layer2`` 512,
        ``layer3`` 1024, ``layer4`` 2048). ``("layer4",)`` equals
        ``forward_head(forward_features(x), pre_logits=True)``. Linear probes on several stages
        follow Goyal et al. 2019 ("Scaling and Benchmarking Self-Supervised Visual
        Representation Learning", sec. 4: linear classifiers on the features of each res stage).

        Raises:
            ValueError: an unknown stage name, or none.
        """
        unknown = [s for s in stages if s not in STAGE_NAMES]
        if unknown or not stages:
            raise ValueError(f"stages must be a non-empty subset of {STAGE_NAMES}, got {list(stages)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for name in STAGE_NAMES[: max(STAGE_NAMES.index(s) for s in stages) + 1]:
            x = self._stage(getattr(self, name), x)
            if name in stages:
                out.append(torch.flatten(self.avgpool(x), 1))
        return torch.cat(out, dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool ``(N, C, H', W')`` -> ``(N, num_features)``; then, unless
        ``pre_logits``, the classifier -> ``(N, num_classes)``."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_head(forward_features(x))``: ``(N, 3, H, W)`` -> logits ``(N, num_classes)``; with a head on other
        stages than layer4 alone (:meth:`reset_classifier`), the classifier of :meth:`pooled_stage_features`."""
        if self.head_stages != ("layer4",):
            return self.fc(self.pooled_stage_features(x, self.head_stages))
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------- registry

_MODEL_ENTRYPOINTS: dict[str, Callable[..., ResNeXt]] = {}


def register_model(fn: Callable[..., ResNeXt]) -> Callable[..., ResNeXt]:
    """Decorator: register a model constructor under its function name (timm's ``_registry.py``).

    Raises:
        ValueError: if the name is already registered (timm only warns; a silent
            override would make one name mean two architectures).
    """
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODEL_ENTRYPOINTS)


def create_model(name: str, num_classes: int = 1000, zero_init_residual: bool = True, fc_std: float = 0.01) -> ResNeXt:
    """Build a registered model with fresh (Goyal et al. 2017) initialization.

    Build inside ``with torch.device("meta"):`` to count parameters without memory.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or num_classes < 0.
    """
    try:
        fn = _MODEL_ENTRYPOINTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    model = fn(num_classes=num_classes, zero_init_residual=zero_init_residual, fc_std=fc_std)
    model.model_name = name
    return model


def torchvision_resnet(spec: ResNeXtSpec, num_classes: int = 1000) -> ResNet:
    """A plain torchvision ``ResNet`` with the same keys and shapes as ``ResNeXt(spec)``
    (for loading an exported trunk without this package)."""
    return ResNet(
        Bottleneck, list(spec.layers), num_classes=num_classes, groups=spec.groups, width_per_group=spec.width_per_group
    )


def _build(spec: ResNeXtSpec, **kwargs) -> ResNeXt:
    return ResNeXt(spec, **kwargs)


@register_model
def resnext_mini(**kwargs) -> ResNeXt:
    """CPU smoke-test model: blocks [1,1,1,1], 8 groups x 4 channels (6.0M params at 1000 classes).

    Trains at 64 px at hundreds of img/s on 2 CPU cores; not a paper model.
    """
    return _build(ResNeXtSpec((1, 1, 1, 1), 8, 4), **kwargs)


@register_model
def resnext26_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-26 32x4d: blocks [2,2,2,2] (15.4M params at 1000 classes); a small CPU model."""
    return _build(ResNeXtSpec((2, 2, 2, 2), 32, 4), **kwargs)


@register_model
def resnext50_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-50 32x4d: blocks [3,4,6,3] (25.0M params); torchvision ``resnext50_32x4d``."""
    return _build(ResNeXtSpec((3, 4, 6, 3), 32, 4, "resnext50_32x4d"), **kwargs)


@register_model
def resnext101_32x4d(**kwargs) -> ResNeXt:
    """ResNeXt-101 32x4d: blocks [3,4,23,3] (44.2M params); no torchvision constructor."""
    return _build(ResNeXtSpec((3, 4, 23, 3), 32, 4), **kwargs)


@register_model
def resnext101_32x8d(**kwargs) -> ResNeXt:
    """ResNeXt-101 32x8d (Mahajan et al. 2018: 88M params, 16B mult-adds at 224 px);
    torchvision ``resnext101_32x8d``."""
    return _build(ResNeXtSpec((3, 4, 23, 3), 32, 8, "resnext101_32x8d"), **kwargs)


@register_model
def resnext101_32x16d(**kwargs) -> ResNeXt:
    """ResNeXt-101 32x16d (Mahajan et al. 2018: 193M params, 36B mult-adds)."""
    return _build(ResNeXtSpec((3, 4, 23, 3), 32, 16), **kwargs)


@register_model
def resnext101_32x32d(**kwargs) -> ResNeXt:
    """ResNeXt-101 32x32d (Mahajan et al. 2018: 466M params, 87B mult-adds)."""
    return _build(ResNeXtSpec((3, 4, 23, 3), 32, 32), **kwargs)


@register_model
def resnext101_32x48d(**kwargs) -> ResNeXt:
    """ResNeXt-101 32x48d (Mahajan et al. 2018: 829M params, 153B mult-adds)."""
    return _build(ResNeXtSpec((3, 4, 23, 3), 32, 48), **kwargs)


# --------------------------------------------------------------------------- trunk export


def unwrap_model(model: nn.Module) -> nn.Module:
    """The inner module of a DDP/DataParallel wrapper (``.module``) or a ``torch.compile``
    wrapper (``._orig_mod``), repeatedly; the model itself otherwise."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def trunk_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict without the classifier (``fc.*``), as contiguous CPU tensors
    with torchvision's key names (wrappers removed)."""
    sd = unwrap_model(model).state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items() if not k.startswith("fc.")}


def export_trunk(model: nn.Module, path_prefix: str | os.PathLike) -> tuple[Path, Path]:
    """Write the trunk (everything but ``fc``) as ``<prefix>.pth`` and ``<prefix>.safetensors``.

    The ``.pth`` is a plain ``{name: tensor}`` dict saved with ``torch.save`` (loadable with
    ``torch.load(weights_only=True)``); the ``.safetensors`` holds the same tensors, with the
    model name in its metadata. Both load into torchvision's constructor with
    ``strict=True`` once its head is removed::

        m = torchvision.models.resnext101_32x8d(); m.fc = nn.Identity()
        m.load_state_dict(torch.load("trunk.pth", weights_only=True), strict=True)

    (for models without a torchvision constructor use :func:`torchvision_resnet`).
    Both files are written atomically (:func:`pipeline.io.atomic.atomic_path`).

    Returns:
        (pth_path, safetensors_path).
    Raises:
        OSError: from the file system, naming the target.
    """
    prefix = Path(path_prefix)
    sd = trunk_state_dict(model)
    name = getattr(unwrap_model(model), "model_name", None) or ""
    pth = prefix.with_name(prefix.name + ".pth")
    st = prefix.with_name(prefix.name + ".safetensors")
    with atomic_path(pth) as tmp:
        torch.save(sd, tmp)
    with atomic_path(st) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "model_name": name})
    return pth, st


def load_trunk(path: str | os.PathLike, model_name: str) -> ResNeXt:
    """Build ``model_name`` with an ``nn.Identity`` head and load an exported trunk into it.

    ``path`` is a ``.safetensors`` or ``.pth`` file from :func:`export_trunk` (a ``.pth`` is
    read with ``weights_only=True``). The returned model outputs ``(N, num_features)``.

    Raises:
        ValueError: unknown model name, or a safetensors file exported from another model.
        RuntimeError: keys or shapes do not match (strict loading).
    """
    path = Path(path)
    model = create_model(model_name, num_classes=0)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            saved = (fh.metadata() or {}).get("model_name") or ""
        if saved and saved != model_name:
            raise ValueError(f"{path} holds a {saved} trunk, not {model_name}")
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True)
    return model
