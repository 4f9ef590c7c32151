"""The work no layout places, as a background load on one CPU core.

A layout pins the rollout, teacher and learner actors to their cores; the driver process (the
controller, the recorder, the Ray calls it makes, Ray's threads in it) and Ray's own processes
run unpinned. A real run measures their CPU (``summary.json`` ``unplaced_cpu``:
``driver_share + ray_system_share``, a fraction ``u`` of one core; ``runtime/cpu_accounting.py``).
The operating system runs them where there is idle time: on this project's layouts that is the
core without the rollout (rollouts dominate OPD and keep their cores busy). Measured on the
2-core host, with the teacher and the learner on core 1 and the rollout on core 0: the driver
ran on core 1, and a teacher call with the learner idle took 1.52x its CPU time in async runs
(driver at 0.26 of a core) against 1.26x in ``sync`` (0.13).

The simulator and the calibration charge it the same way, so that a profile fitted on one
layout carries the load to the core it lands on in another: on the chosen core ``d``, a busy
worker's slowdown gains ``u`` (fair time slicing with a load of ``u`` cores)

    s_d = 1 + sum_{o busy on d, o != worker} phi(r, role(o)) + u          (d = the chosen core)

(``sim/devices.py``; ``calibration/contention.py`` divides a span's time by the same ``s_d``).
Fitted on the default layout (driver on the teacher and learner's core), the teacher's and the
learner's uncontended costs come out without the driver's share; on a layout that leaves a
core free (every role on core 0) the load moves there and slows nobody.

The core is ``sim.costs.unplaced_device`` when set, otherwise the one with the fewest rollout
workers, then the fewest workers, then the highest index (an empty core wins). GPU clusters
take none: the driver's CPU does not slow a GPU's work. Pure Python.
"""

from __future__ import annotations

from typing import Any, Mapping

from asyncopd.control.messages import role_of


def unplaced_core(placement: Mapping[str, tuple[int, ...]], num_devices: int) -> int:
    """The core the unplaced work runs on by default (module docstring)."""
    rollout = [0] * num_devices
    workers = [0] * num_devices
    for worker, devices in placement.items():
        for d in devices:
            if d < num_devices:
                workers[d] += 1
                rollout[d] += role_of(worker) == "rollout"
    return min(range(num_devices), key=lambda d: (rollout[d], workers[d], -d))


def background_load(costs: Any, cluster: Any, placement: Mapping[str, tuple[int, ...]]) -> dict[int, float]:
    """``{core: u}`` for a config's ``sim.costs`` and ``cluster`` (empty without load, or on GPUs)."""
    share = float(getattr(costs, "unplaced_share", 0.0) or 0.0)
    if share <= 0 or cluster.device_type != "cpu":
        return {}
    core = getattr(costs, "unplaced_device", None)
    if core is None:
        core = unplaced_core(placement, cluster.num_devices)
    elif not 0 <= core < cluster.num_devices:
        raise ValueError(f"sim.costs.unplaced_device: core {core} is not one of the cluster's "
                         f"{cluster.num_devices} (cluster.num_devices)")
    return {core: share}
