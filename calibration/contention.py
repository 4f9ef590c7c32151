"""Undo device sharing in measured stage times, and fit how much sharing costs.

A recorded span of a worker that shares a device is longer than the work it did: while
``k(t)`` workers were busy on its most crowded device it progressed at rate

    r(t) = 1 / prod_d (1 + phi * (k_d(t) - 1))                          (sim/devices.py)

(``k_d(t)``: workers busy on device ``d`` of the span's worker; one factor per device)

so the uncontended work inside a span ``[t0, t1]`` is

    W(t0, t1; phi) = integral_{t0}^{t1} r(t) dt .

Fitting the stage cost models to ``W`` instead of the wall-clock duration keeps contention
from being counted twice (once inside the fitted costs, again by the simulator's sharing
model). ``phi`` itself (``sim.costs.colocation_factor``) is the value on a grid that makes the
linear stage models fit best: with the right ``phi`` a span's work depends on its tokens only,
not on who else was running.

Busy intervals come from the trace: ``train`` spans (learner), ``score`` spans (teachers) and
the union of a rollout worker's ``generate`` spans (its waves or continuous batch).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

Interval = tuple[float, float]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of intervals, as sorted disjoint intervals."""
    out: list[Interval] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def busy_intervals(events: Sequence[Mapping[str, Any]]) -> dict[str, list[Interval]]:
    """Worker name -> merged intervals (seconds) in which it was busy, from trace events."""
    spans: dict[str, list[Interval]] = defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ("train", "score", "generate"):
            t0 = e["ts"] / 1e6
            spans[e["args"]["worker"]].append((t0, t0 + e["dur"] / 1e6))
    return {w: merge(iv) for w, iv in spans.items()}


class DeviceCrowd:
    """How many workers were busy on each device over time, and the uncontended work ``W``
    of a worker's interval (see the module docstring)."""

    def __init__(self, busy: Mapping[str, list[Interval]], placement: Mapping[str, tuple[int, ...]]) -> None:
        self.placement = dict(placement)
        users: dict[int, list[str]] = defaultdict(list)
        for worker, devs in placement.items():
            for d in devs:
                users[d].append(worker)
        self.shared = {w for w, devs in placement.items() if any(len(users[d]) > 1 for d in devs)}
        # per device: breakpoints t_0 < t_1 < ... and the crowd on [t_i, t_{i+1})
        self._steps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for d, ws in users.items():
            if len(ws) < 2:
                continue
            deltas: dict[float, int] = defaultdict(int)
            for w in ws:
                for a, b in busy.get(w, ()):
                    deltas[a] += 1
                    deltas[b] -= 1
            times = np.array(sorted(deltas), dtype=float)
            crowd = np.cumsum([deltas[t] for t in sorted(deltas)]).astype(float)
            self._steps[d] = (times, crowd)

    def work(self, worker: str, t0: float, t1: float, phi: float) -> float:
        """``W(t0, t1; phi)`` for ``worker`` (the worker itself is counted in the crowd)."""
        if worker not in self.shared or t1 <= t0:
            return max(0.0, t1 - t0)
        devs = [d for d in self.placement[worker] if d in self._steps]
        cuts = {t0, t1}
        for d in devs:
            times = self._steps[d][0]
            lo, hi = np.searchsorted(times, [t0, t1], side="right")
            cuts.update(times[lo:hi].tolist())
        edges = np.array(sorted(cuts))
        mids = (edges[:-1] + edges[1:]) / 2
        slowdown = np.ones_like(mids)
        for d in devs:
            times, level = self._steps[d]
            idx = np.searchsorted(times, mids, side="right") - 1
            crowd = np.maximum(1.0, np.where(idx >= 0, level[np.clip(idx, 0, None)], 0.0))
            slowdown *= 1.0 + phi * (crowd - 1.0)
        return float(np.sum(np.diff(edges) / slowdown))

    def crowded(self, worker: str, t0: float, t1: float) -> bool:
        """Did anyone else run on ``worker``'s devices during ``[t0, t1]``?"""
        return self.work(worker, t0, t1, 1.0) < (t1 - t0) * (1 - 1e-9)


PHI_GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)
