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


class QueueTracker:
    """Queue depths as piecewise-constant functions of time.

    ``observe(t, depths)`` is called after every controller event. It integrates each queue
    over time (for time averages, e.g. Little's law ``L = lambda * W``) and keeps a timeline
    for plots, thinned to at most ``max_points`` points (every other point is dropped when full).
    """

    def __init__(self, max_points: int = 4000) -> None:
        self.max_points = max_points
        self.integral: dict[str, float] = {}
        self._last_t = 0.0
        self._last: dict[str, int] = {}
        self.timeline: list[tuple[float, dict[str, int]]] = []
        self._stride = 1
        self._seen = 0

    def observe(self, t: float, depths: dict[str, int]) -> None:
        dt = t - self._last_t
        if dt > 0:
            for k, v in self._last.items():
                self.integral[k] = self.integral.get(k, 0.0) + v * dt
            self._last_t = t
        if depths != self._last:
            self._last = dict(depths)
            self._seen += 1
            if self._seen % self._stride == 0:
                self.timeline.append((t, self._last))
                if len(self.timeline) > self.max_points:
                    self.timeline = self.timeline[::2]
                    self._stride *= 2

    def time_averages(self, t_end: float) -> dict[str, float]:
        if t_end <= 0:
            return {}
        tail = max(0.0, t_end - self._last_t)
        return {k: (self.integral.get(k, 0.0) + self._last.get(k, 0) * tail) / t_end
                for k in set(self.integral) | set(self._last)}

    def write_csv(self, path) -> None:
        if not self.timeline:
            return
        keys = list(self.timeline[0][1])
        lines = ["t," + ",".join(keys)] + [f"{t:.6f}," + ",".join(str(d.get(k, 0)) for k in keys)
                                           for t, d in self.timeline]
        path.write_text("\n".join(lines) + "\n")
