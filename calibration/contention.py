"""Undo device sharing in measured stage times, and fit how much sharing costs.

A recorded span of a worker of role ``r`` that shares a device is longer than the work it
did: it progressed at rate

    r(t) = 1 / prod_d (1 + sum_{o busy on d at t, o != worker} phi(r, role(o)))   (sim/devices.py)

(one factor per device of the worker; ``phi`` per pair of roles, asyncopd/config/colocation.py)

so the uncontended work inside a span ``[t0, t1]`` is

    W(t0, t1; phi) = integral_{t0}^{t1} r(t) dt .

Fitting the stage cost models to ``W`` instead of the wall-clock duration keeps contention
from being counted twice (once inside the fitted costs, again by the simulator's sharing
model). ``phi`` itself, per pair of roles the run shows sharing a device
(``sim.costs.colocation_pairs``), is the value on a grid that makes the linear stage models fit
best: with the right ``phi`` a span's work depends on its tokens only, not on who else was
running.

On the core that also runs the unplaced work (the driver, Ray's processes: a load ``u``,
``asyncopd/config/unplaced.py``) each factor gains ``u``, as in the simulator; a worker alone
there runs at ``1 / (1 + u)``.

Busy intervals come from the trace: ``train`` spans (learner), ``score`` spans (teachers) and
the union of a rollout worker's ``generate`` spans (its waves or continuous batch).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from asyncopd.config.colocation import ROLES, Sharing, pair_key, role_of

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
    """Who was busy on each device over time, by role, and the uncontended work ``W`` of a
    worker's interval (see the module docstring)."""

    def __init__(self, busy: Mapping[str, list[Interval]], placement: Mapping[str, tuple[int, ...]],
                 background: Mapping[int, float] | None = None) -> None:
        self.placement = dict(placement)
        self.background = dict(background or {})  # device -> unplaced load u (asyncopd/config/unplaced.py)
        users: dict[int, list[str]] = defaultdict(list)
        for worker, devs in placement.items():
            for d in devs:
                users[d].append(worker)
        self.shared = {w for w, devs in placement.items()
                       if any(len(users[d]) > 1 or d in self.background for d in devs)}
        # per device: breakpoints t_0 < t_1 < ... and the busy workers of each role on [t_i, t_{i+1})
        self._steps: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache: dict[tuple[str, float, float], tuple[np.ndarray, list[np.ndarray]]] = {}
        for d, ws in users.items():
            if len(ws) < 2:
                continue
            deltas: dict[float, np.ndarray] = defaultdict(lambda: np.zeros(len(ROLES)))
            for w in ws:
                r = ROLES.index(role_of(w))
                for a, b in busy.get(w, ()):
                    deltas[a][r] += 1
                    deltas[b][r] -= 1
            times = np.array(sorted(deltas), dtype=float)
            levels = np.cumsum([deltas[t] for t in sorted(deltas)], axis=0).reshape(len(times), len(ROLES))
            self._steps[d] = (times, levels)

    def _pieces(self, worker: str, t0: float, t1: float) -> tuple[np.ndarray, list[np.ndarray]]:
        """Durations of the pieces of ``[t0, t1]`` over which the crowd on ``worker``'s devices
        is constant, and per device the *other* busy workers of each role on every piece
        (cached: a fit asks for the same spans under many values of ``phi``)."""
        key = (worker, t0, t1)
        if key not in self._cache:
            self._cache[key] = self._cut(worker, t0, t1)
        return self._cache[key]

    def _cut(self, worker: str, t0: float, t1: float) -> tuple[np.ndarray, list[np.ndarray]]:
        devs = self._crowded(worker)
        cuts = {t0, t1}
        for d in devs:
            times = self._steps[d][0]
            lo, hi = np.searchsorted(times, [t0, t1], side="right")
            cuts.update(times[lo:hi].tolist())
        edges = np.array(sorted(cuts))
        mids = (edges[:-1] + edges[1:]) / 2
        own = np.eye(len(ROLES))[ROLES.index(role_of(worker))]
        others = []
        for d in devs:
            times, levels = self._steps[d]
            idx = np.searchsorted(times, mids, side="right") - 1
            at = np.where((idx >= 0)[:, None], levels[np.clip(idx, 0, None)], 0.0)
            others.append(np.maximum(0.0, at - own))  # the worker itself is busy inside its own spans
        return np.diff(edges), others

    def work(self, worker: str, t0: float, t1: float, sharing: Sharing | float) -> float:
        """``W(t0, t1)`` for ``worker`` under ``sharing`` (one ``phi`` or a ``Sharing`` per pair)."""
        if worker not in self.shared or t1 <= t0:
            return max(0.0, t1 - t0)
        phi = np.array(Sharing.coerce(sharing).row[role_of(worker)])
        dt, others = self._pieces(worker, t0, t1)
        slowdown = np.ones_like(dt)
        for d, o in zip(self._crowded(worker), others):
            slowdown *= 1.0 + o @ phi + self.background.get(d, 0.0)
        for d in self.placement[worker]:  # a core it shares with the unplaced load alone
            if d in self.background and d not in self._steps:
                slowdown *= 1.0 + self.background[d]
        return float(np.sum(dt / slowdown))

    def _crowded(self, worker: str) -> list[int]:
        """``worker``'s devices that other workers share, in ``_cut``'s order."""
        return [d for d in self.placement[worker] if d in self._steps]

    def overlap(self, worker: str, t0: float, t1: float) -> dict[str, float]:
        """Pair of roles -> seconds of ``[t0, t1]`` during which ``worker`` shared a device with
        a busy worker of the pair's other role (what makes that pair's ``phi`` observable)."""
        if worker not in self.shared or t1 <= t0:
            return {}
        dt, others = self._pieces(worker, t0, t1)
        out: dict[str, float] = {}
        for r, role in enumerate(ROLES):
            seen = np.zeros_like(dt, dtype=bool)
            for o in others:
                seen |= o[:, r] > 0
            if seen.any():
                out[pair_key(role_of(worker), role)] = float(dt[seen].sum())
        return out


PHI_GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)
MIN_PAIR_SPANS = 2  # a pair's phi is fitted when its workers were busy together in this many spans
INSEPARABLE = 0.9  # ... and it cannot be told from the costs when each role spent this share of its busy time in it
