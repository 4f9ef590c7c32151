"""Small statistics shared by the recorder and the comparison report (pure Python)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Iterable


def staleness_summary(means: list[float], maxes: list[int]) -> dict:
    """Per-sample token-weighted mean staleness → min/mean/max/std; per-sample max → histogram."""
    if not means:
        return {"min": None, "mean": None, "max": None, "std": None, "max_mean": None, "hist": {}}
    hist = Counter(int(m) for m in maxes)
    return {
        "min": min(means),
        "mean": statistics.fmean(means),
        "max": max(means),
        "std": statistics.pstdev(means) if len(means) > 1 else 0.0,
        "max_mean": statistics.fmean(maxes),
        "hist": {str(k): hist[k] for k in sorted(hist)},
    }


def busy_by_stage(spans: Iterable[tuple[str, float, float]], t0: float, t1: float) -> dict[str, float]:
    """Seconds of each stage's spans that fall inside (t0, t1], summed over workers. Only spans
    already finished by t1 are known, so work still in flight at t1 is not counted yet."""
    out: dict[str, float] = {"generate": 0.0, "teacher": 0.0, "train": 0.0, "sync": 0.0}
    for stage, s, e in spans:
        overlap = min(e, t1) - max(s, t0)
        if overlap > 0:
            out[stage] = out.get(stage, 0.0) + overlap
    return out
