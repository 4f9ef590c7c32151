"""Small statistics shared by the recorder and the comparison report (pure Python)."""

from __future__ import annotations

import statistics
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np


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

    ``observe(t, depths)`` is called after every controller event with a tuple of depths in
    the order of ``names``. It integrates each queue over time (for time averages, e.g.
    Little's law ``L = lambda * W``) and keeps a timeline for plots, thinned to at most
    ``max_points`` points (every other point is dropped when full; none with
    ``keep_timeline=False``, for a run kept in memory). Changes are buffered and folded in
    with numpy every ``chunk`` changes: ``observe`` itself is one comparison and one append,
    which matters at tens of thousands of events per simulated run.
    """

    def __init__(self, names: tuple[str, ...], max_points: int = 4000, chunk: int = 8192,
                 keep_timeline: bool = True) -> None:
        self.names = names
        self.keep_timeline = keep_timeline
        self.max_points = max_points
        self.chunk = chunk
        self._integral = np.zeros(len(names))
        self._last_t = 0.0
        self._last: tuple[int, ...] = (0,) * len(names)  # the newest depths observed
        self._held: tuple[int, ...] = self._last  # the depths from ``_last_t`` on, once folded
        self._times: list[float] = []  # the buffered changes: their times,
        self._depths: list[tuple[int, ...]] = []  # and the depths from each on
        self._timeline: list[tuple[float, tuple[int, ...]]] = []
        self._stride = 1
        self._seen = 0

    def observe(self, t: float, depths: tuple[int, ...]) -> None:
        if depths != self._last:
            self._last = depths
            self._times.append(t)
            self._depths.append(depths)
            if len(self._times) >= self.chunk:
                self._fold()

    def _fold(self) -> None:
        """Integrate the buffered changes and add them to the thinned timeline."""
        stamps, depths = self._times, self._depths
        if not stamps:
            return
        self._times, self._depths = [], []
        n, width = len(stamps), len(self.names)
        times = np.array(stamps, dtype=float)
        after = np.fromiter(chain.from_iterable(depths), float, n * width).reshape(n, width)
        held = np.vstack((np.array(self._held, dtype=float), after[:-1]))  # the value before each change
        dt = np.diff(np.concatenate(([self._last_t], times)))
        self._integral += (held * dt[:, None]).sum(axis=0)
        self._last_t, self._held = float(times[-1]), depths[-1]
        if self.keep_timeline:
            for point in zip(stamps, depths):
                self._keep_thinned(point)

    def _keep_thinned(self, point: tuple[float, tuple[int, ...]]) -> None:
        """Keep every ``stride``-th point; when full, drop every other one and double the stride."""
        self._seen += 1
        if self._seen % self._stride == 0:
            self._timeline.append(point)
            if len(self._timeline) > self.max_points:
                self._timeline = self._timeline[::2]
                self._stride *= 2

    def restore(self, t: float, averages: dict[str, float],
                timeline: Iterable[tuple[float, tuple[int, ...]]] = ()) -> None:
        """Carry on from an earlier tracker (a run resumed from a checkpoint): its time averages
        over ``[0, t]`` and its (thinned) timeline; every queue is empty from ``t`` on."""
        self._fold()
        self._integral = np.array([float(averages.get(k) or 0.0) * t for k in self.names])
        self._last_t = t
        self._last = self._held = (0,) * len(self.names)
        self._timeline, self._stride, self._seen = [], 1, 0
        points = [p for p in timeline if len(p[1]) == len(self.names) and p[0] <= t] + [(t, self._held)]
        for point in points:  # (thinned as observed points are; their integral is already known)
            self._keep_thinned(point)

    @property
    def timeline(self) -> list[tuple[float, tuple[int, ...]]]:
        self._fold()
        return self._timeline

    def time_averages(self, t_end: float) -> dict[str, float]:
        self._fold()
        if t_end <= 0:
            return {}
        tail = max(0.0, t_end - self._last_t)
        return {k: float(acc + v * tail) / t_end for k, acc, v in zip(self.names, self._integral, self._held)}

    def write_csv(self, path) -> None:
        timeline = self.timeline
        if not timeline:
            return
        lines = ["t," + ",".join(self.names)] + [f"{t:.6f}," + ",".join(map(str, d)) for t, d in timeline]
        path.write_text("\n".join(lines) + "\n")


def read_queues_csv(path: Path) -> list[tuple[float, tuple[int, ...]]]:
    """The timeline ``QueueTracker.write_csv`` wrote ([] when absent or unreadable)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines()[1:]:
        try:
            t, *depths = line.split(",")
            out.append((float(t), tuple(int(x) for x in depths)))
        except ValueError:
            return []
    return out
