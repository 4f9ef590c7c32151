"""The analytic (roofline) cost model against micro-benchmark points: how wrong is it, per stage?

A profiled point (``calibration/profilers``: ``stage`` plus its shape and measured ``seconds``)
gets the time ``sim/analytic.py`` charges for the same work on a hardware preset:

    decode   one step of ``n`` sequences at ``kv`` context:  alpha + max(beta, gamma)   (the
             first step of the segment ``decode_segment(n, kv)``, equation (1) of sim/cost_model.py)
    prefill  ``prefill(n * prompt)``
    teacher  ``teacher(tokens, samples)``
    learner  ``learner(tokens, samples)`` at the point's micro-batch size, one device

and ``ratio = measured / predicted``: above 1 the roofline is optimistic (the backend runs
slower than the hardware allows), below 1 pessimistic. Sync points are left out: the analytic
sync is a control-plane pause plus a link transfer, the profiled one a state-dict load.

``hardware_preset`` maps a GPU's name to the catalogue's preset (``None`` when it has none).
Pure Python apart from the cost model (no torch).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Any, Iterable, Optional

from sim.analytic import AnalyticCosts

STAGES = ("decode", "prefill", "teacher", "learner")
_GPU_PRESETS = (("h200", "h200"), ("h100", "h100-sxm"), ("b200", "b200"), ("a100", "a100-80gb"))


def hardware_preset(gpu_name: Optional[str]) -> Optional[str]:
    """``NVIDIA H200`` -> ``h200``; ``None`` for a CPU (use ``cpu``) or a GPU the catalogue lacks."""
    if gpu_name is None:
        return "cpu"
    low = gpu_name.lower()
    return next((preset for key, preset in _GPU_PRESETS if key in low), None)


def predict_point(model: AnalyticCosts, point: dict[str, Any]) -> Optional[float]:
    """Seconds the analytic model charges for a profiled point (module docstring); ``None`` for sync."""
    s = point["stage"]
    if s == "decode":
        alpha, beta, gamma, _ = model.decode_segment(int(point["n"]), int(point["kv"]))
        return alpha + max(beta, gamma)
    if s == "prefill":
        return model.prefill(int(point["tokens"]))
    if s == "teacher":
        return model.teacher(int(point["tokens"]), int(point["samples"]))
    if s == "learner":
        return replace(model, micro_batch_size=int(point["micro_batch_size"])).learner(int(point["tokens"]),
                                                                                       int(point["samples"]))
    return None


def compare_points(model: AnalyticCosts, points: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each point with ``predicted_s`` and ``ratio`` (measured / predicted) added; sync points dropped."""
    out = []
    for p in points:
        pred = predict_point(model, p)
        if pred is None or pred <= 0 or not math.isfinite(p.get("seconds", math.nan)):
            continue
        out.append({**p, "predicted_s": pred, "ratio": p["seconds"] / pred})
    return out


def stage_ratios(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage: number of points and the median, smallest and largest ratio."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["stage"], []).append(r["ratio"])
    return {s: {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}
            for s, v in by.items() if v}
