"""How ``transfer/results.json`` is laid out: its targets in suite order (report, summarize, notebooks)."""

from __future__ import annotations


def transfer_targets(res: dict | None) -> dict[str, dict]:
    """The per-target sections of a ``transfer/results.json`` in suite order (a pre-suite file with
    top-level ``rows`` is read as one target)."""
    if not isinstance(res, dict):
        return {}
    if isinstance(res.get("targets"), dict):
        order = [n for n in res.get("target_order") or [] if n in res["targets"]]
        order += [n for n in res["targets"] if n not in order]
        return {n: res["targets"][n] for n in order}
    if "rows" in res:
        return {str(res.get("target", "target")): res}
    return {}
