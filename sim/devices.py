"""Devices shared by several workers: processor sharing.

A layout may put several workers on one device (colocation: e.g. the teacher and the
learner on the same CPU core or GPU). While ``k`` workers are busy on a device, each
progresses at ``1/k`` of its own speed (time slicing with a fine quantum). A worker spread
over several devices (tensor parallelism) goes at the pace of its most crowded device:

    slowdown(worker) = max_{d in devices(worker)} busy_workers(d)          (>= 1)

Work is measured in *uncontended seconds*; ``run_work`` turns it into simulated time,
re-planning whenever the crowd on one of its devices changes. Workers on devices of their
own never pay more than a dictionary lookup.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import simpy


class SharedDevices:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.busy: dict[int, set[str]] = defaultdict(set)
        self._listeners: dict[int, dict[str, Callable[[], None]]] = defaultdict(dict)

    def slowdown(self, devices: Iterable[int]) -> int:
        return max((len(self.busy[d]) for d in devices), default=1) or 1

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
        for d in devices:
            before = len(self.busy[d])
            (self.busy[d].add if add else self.busy[d].discard)(holder)
            if len(self.busy[d]) != before:
                notify.update({h: cb for h, cb in self._listeners[d].items() if h != holder})
        for cb in notify.values():
            cb()

    def run_work(self, holder: str, devices: tuple[int, ...], work: float):
        """SimPy process body: occupy ``devices`` for ``work`` uncontended seconds."""
        self.acquire(holder, devices)
        remaining = work
        try:
            while remaining > 0:
                f = self.slowdown(devices)
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


def worker_devices(devices: list[int], workers: int, tp: int, index: int) -> tuple[int, ...]:
    """The devices of worker ``index`` of a role: its own ``tp`` devices when the role has
    ``workers * tp`` or more, otherwise all of the role's devices (shared)."""
    if len(devices) >= workers * tp:
        return tuple(devices[index * tp:(index + 1) * tp])
    return tuple(devices)
