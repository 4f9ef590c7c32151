"""Devices shared by several workers: processor sharing with a calibrated penalty.

A layout may put several workers on one device (colocation: e.g. the teacher and the
learner on the same CPU core or GPU). While others are busy on its device, a worker of role
``r`` progresses at ``1 / s`` of its own speed, ``s = 1 + sum_o phi(r, role(o))`` over the
other busy workers ``o`` (``1 + phi * (k - 1)`` when every pair has the same ``phi``).
``phi = 1`` is fair time slicing; ``phi > 1`` adds switching and cache costs, ``phi < 1``
means the workers leave gaps the others fill. ``phi`` per pair of roles, or per direction
(``a|b``: what a busy ``b`` costs ``a``), is ``sim.costs.colocation_pairs`` (default
``colocation_factor``; ``asyncopd/config/colocation.py``), fitted by ``asyncopd calibrate
--from-run`` (``calibration/contention.py``) or measured by ``asyncopd calibrate --contention``
(``calibration/contention_probe.py``).

A worker spread over several devices (tensor parallelism, or a multi-threaded CPU worker)
advances only while *all* of its devices run it: its ranks or threads meet at every
collective or barrier. With each device time-sliced independently, that is the product

    slowdown(worker) = prod_{d in devices(worker)} s_d(worker)                          (>= 1)

(gang scheduling without coordination). For a worker on one device, or on devices of its
own, it is the single-device rule. Measured on 2 CPU cores: a 2-thread learner sharing both
cores with four other workers took 0.114 s per step of fixed cost against 0.034 s alone, far
beyond the ``max`` over its devices that this model used before.

A core that also runs the work no layout places (the driver, Ray's processes) adds its load
``u`` to the slowdown of every busy worker there: ``s = 1 + sum_o phi(r, role(o)) + u``
(``asyncopd/config/unplaced.py``).

Work is measured in *uncontended seconds*; ``run_work`` turns it into simulated time,
re-planning whenever the crowd on one of its devices changes. Workers on devices of their
own never pay more than a dictionary lookup.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Mapping

import simpy

from asyncopd.config.colocation import Sharing, role_of
from asyncopd.config.placement import placement, worker_devices  # noqa: F401  (re-exported)


class SharedDevices:
    def __init__(self, env: simpy.Environment, sharing: Sharing | float = 1.0,
                 background: Mapping[int, float] | None = None) -> None:
        self.env = env
        self.sharing = Sharing.coerce(sharing)
        self.background = dict(background or {})  # device -> load no worker places (asyncopd/config/unplaced.py)
        self.busy: dict[int, set[str]] = defaultdict(set)
        self._listeners: dict[int, dict[str, Callable[[], None]]] = defaultdict(dict)
        self._roles: dict[str, str] = {}  # holder -> role_of(holder) (asked for every busy holder, every plan)
        # device -> holder -> its slowdown on that device, kept until the device's crowd changes
        # (the same set, iterated in the same order, gives the same float)
        self._factors: dict[int, dict[str, float]] = defaultdict(dict)

    def slowdown(self, holder: str, devices: Iterable[int]) -> float:
        """How many times slower than alone ``holder`` runs on ``devices`` right now: the
        product over its devices of ``Sharing.slowdown``, as ``Sharing.gang_slowdown``
        multiplies them (in the same order), each device's factor kept while its crowd stays."""
        roles = self._roles
        if holder not in roles:
            roles[holder] = role_of(holder)
        role, f = roles[holder], 1.0
        for d in devices:
            factors = self._factors[d]
            fd = factors.get(holder)
            if fd is None:
                fd = self.sharing.slowdown(role, [roles[o] for o in self.busy[d] if o != holder])
                if d in self.background:
                    fd += self.background[d]
                factors[holder] = fd
            f *= fd
        return f

    def acquire(self, holder: str, devices: Iterable[int]) -> None:
        self._change(holder, devices, add=True)

    def release(self, holder: str, devices: Iterable[int]) -> None:
        self._change(holder, devices, add=False)

    def listen(self, holder: str, devices: Iterable[int], callback: Callable[[], None] | None) -> None:
        """Call ``callback`` whenever another worker starts or stops on one of ``devices``
        (``None`` stops listening)."""
        for d in devices:
            if callback is None:
                self._listeners[d].pop(holder, None)
            else:
                self._listeners[d][holder] = callback

    def _change(self, holder: str, devices: Iterable[int], *, add: bool) -> None:
        notify: dict[str, Callable[[], None]] = {}
        if holder not in self._roles:
            self._roles[holder] = role_of(holder)
        for d in devices:
            before = len(self.busy[d])
            (self.busy[d].add if add else self.busy[d].discard)(holder)
            if len(self.busy[d]) != before:
                self._factors[d].clear()
                notify.update({h: cb for h, cb in self._listeners[d].items() if h != holder})
        for cb in notify.values():
            cb()

    def run_work(self, holder: str, devices: tuple[int, ...], work: float):
        """SimPy process body: occupy ``devices`` for ``work`` uncontended seconds."""
        self.acquire(holder, devices)
        remaining = work
        try:
            while remaining > 0:
                f = self.slowdown(holder, devices)
                wake = self.env.event()
                self.listen(holder, devices, lambda: wake.triggered or wake.succeed())
                self.env.timeout(remaining * f).callbacks.append(lambda _: wake.triggered or wake.succeed())
                t0 = self.env.now
                yield wake
                if self.env.now >= t0 + remaining * f:
                    break  # finished (also when remaining * f is below the clock's resolution)
                remaining -= (self.env.now - t0) / f
        finally:
            self.listen(holder, devices, None)
            self.release(holder, devices)

