"""Which devices each worker of a layout runs on (pure Python: both drivers and the
calibration read it, so a simulated worker shares exactly the devices its real actor pins)."""

from __future__ import annotations

from typing import Any


def worker_devices(devices: list[int], workers: int, tp: int, index: int) -> tuple[int, ...]:
    """The devices of worker ``index`` of a role: its own ``tp`` devices when the role has
    ``workers * tp`` or more, otherwise all of the role's devices (shared)."""
    if len(devices) >= workers * tp:
        return tuple(devices[index * tp:(index + 1) * tp])
    return tuple(devices)


def placement(layout: Any) -> dict[str, tuple[int, ...]]:
    """Worker name -> the devices it runs on, for a config's ``layout`` (both drivers and the
    calibration use the same names: ``rollout-i``, ``teacher-i``, ``learner-0``)."""
    return {
        **{f"rollout-{i}": worker_devices(layout.rollout.devices, layout.rollout.workers, layout.rollout.tp, i)
           for i in range(layout.rollout.workers)},
        **{f"teacher-{i}": worker_devices(layout.teacher.devices, layout.teacher.workers, layout.teacher.tp, i)
           for i in range(layout.teacher.workers)},
        "learner-0": tuple(layout.learner.devices),
    }
