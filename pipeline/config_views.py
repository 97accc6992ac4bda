"""Views of a resolved config derived from the schema's field marks (foundation layer).

Each field of :mod:`pipeline.config` says whether it changes results
(:func:`pipeline.config.runtime` fields do not: threads, workers, progress, ...) and whether a
resumed run may change it (:func:`pipeline.config.resumable`); fields added later carry the
value at which they leave old behaviour (:func:`pipeline.config.added`). From those marks:

* :func:`result_view`: what a stage key hashes (``pipeline.orchestration.keys``);
* :func:`results_config`: what a stage's manifest records as the config behind its outputs;
* :func:`resume_recipe`: what a resumed pretraining run must share with its checkpoint.
"""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass
from typing import Any, Dict, List

from pipeline.config import NEUTRAL, RESULTS, RESUMABLE, PipelineConfig, PretrainConfig, to_container


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in fields(cls)}


def _schema_of(tp: Any) -> tuple[str, type | None]:
    """("one", dataclass) / ("list", dataclass) / ("dict", dataclass) / ("leaf", None) for a field's type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _schema_of(inner[0]) if len(inner) == 1 else ("leaf", None)
    # is_dataclass() narrows to "instance or class"; a type hint is a class
    if is_dataclass(tp):
        return "one", typing.cast(type, tp)
    if origin in (list, List) and args and is_dataclass(args[0]):
        return "list", typing.cast(type, args[0])
    if origin in (dict, Dict) and len(args) == 2 and is_dataclass(args[1]):
        return "dict", typing.cast(type, args[1])
    return "leaf", None


def _at_neutral(f: Any, v: Any) -> bool:
    """Whether field ``f`` was declared with :func:`added` and ``v`` is its neutral (old-behaviour) value."""
    return NEUTRAL in f.metadata and v == f.metadata[NEUTRAL]


def _drop(data: Any, cls: type, drop: Any, neutral: bool = False) -> Any:
    if not isinstance(data, dict):
        return data
    known = _field_types(cls)
    out = {}
    for k, v in data.items():
        if k not in known:
            out[k] = v
            continue
        f, tp = known[k]
        if drop(f) or (neutral and _at_neutral(f, v)):
            continue
        kind, sub = _schema_of(tp)
        if sub is None:  # a "leaf": kept as it is
            pass
        elif kind == "one":
            v = _drop(v, sub, drop, neutral)
        elif kind == "list" and isinstance(v, list):
            v = [_drop(x, sub, drop, neutral) for x in v]
        elif kind == "dict" and isinstance(v, dict):
            v = {name: _drop(x, sub, drop, neutral) for name, x in v.items()}
        out[k] = v
    return out


def result_view(data: dict, schema: type | None = None) -> dict:
    """``data`` (plain resolved config, or a part of it with its ``schema`` dataclass) without the
    :func:`runtime` fields and the :func:`added` fields at their neutral value, at every depth: what a
    stage key hashes.

    Keys the schema does not know (e.g. a recorded ``tf32``) are kept.
    """
    return _drop(data, schema or PipelineConfig, lambda f: f.metadata.get(RESULTS) is False, neutral=True)


def results_config(cfg: Any, *names: str) -> dict:
    """``{name: resolved section without its runtime fields}`` for top-level keys ``names`` of ``cfg`` (``seed``:
    its value): what a stage's manifest records as the config that produced its outputs."""
    types = {f.name: tp for f, tp in _field_types(PipelineConfig).values()}
    out = {}
    for name in names:
        value = to_container(cfg[name] if isinstance(cfg, dict) else getattr(cfg, name))
        kind, sub = _schema_of(types[name])
        out[name] = _drop(value, sub, lambda f: f.metadata.get(RESULTS) is False) if kind == "one" and sub is not None else value
    return out


def resume_recipe(resolved: dict) -> dict:
    """The part of a resolved pretraining config a resumed run must share with its checkpoint: ``seed`` and
    ``pretrain`` without the :func:`runtime` and :func:`resumable` fields (and :func:`added` ones at their
    neutral value, so checkpoints written before such a field existed still resume)."""
    pt = _drop(
        resolved.get("pretrain") or {},
        PretrainConfig,
        lambda f: f.metadata.get(RESULTS) is False or f.metadata.get(RESUMABLE) is True,
        neutral=True,
    )
    return {"seed": resolved.get("seed"), "pretrain": pt}
