"""CPU time of the work no layout places: the driver process and Ray's own processes.

A layout pins rollout, teacher and learner actors to their devices; the driver (controller,
recorder, the Ray calls it makes) and Ray's system processes (GCS server, raylet, log monitor,
...) run unpinned, taking CPU from whichever cores are free or from the placed workers. Over a
run the tool records, from ``/proc`` through psutil,

    driver_s      CPU seconds of the driver process (all its threads)
    ray_system_s  CPU seconds of the driver's descendant processes that are not actor workers
    actors_s      CPU seconds of the actor worker processes (``ray::...``): the placed work,
                  including what runs outside their recorded spans (Ray's threads in the actor)

and their shares of one core over the run's wall time, into ``summary.json``
(``unplaced_cpu``). The shares tell how much of a core the simulator's devices never see; a
process that exits mid-run is counted up to its last sample.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _cpu(p: Any) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _is_actor(p: Any) -> bool:
    try:
        return p.name().startswith("ray::") or any("default_worker.py" in a for a in p.cmdline())
    except Exception:  # noqa: BLE001 - a process that vanished counts as neither
        return False


class CpuAccount:
    """Snapshot the CPU of the driver and its descendants at ``start`` and ``finish``."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._t0 = time.time()
        self._before = self._snapshot()

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        out = {self._me.pid: ("driver", _cpu(self._me))}
        for child in self._me.children(recursive=True):
            try:
                out[child.pid] = ("actors" if _is_actor(child) else "ray_system", _cpu(child))
            except Exception:  # noqa: BLE001 - exited between listing and reading
                continue
        return out

    def finish(self) -> dict[str, float]:
        wall = time.time() - self._t0
        after = self._snapshot()
        totals = {"driver": 0.0, "ray_system": 0.0, "actors": 0.0}
        for pid, (kind, cpu) in after.items():
            totals[kind] += cpu - self._before.get(pid, (kind, 0.0))[1]
        out = {f"{k}_s": round(v, 3) for k, v in totals.items()}
        out.update({f"{k}_share": round(v / wall, 4) if wall > 0 else 0.0 for k, v in totals.items()},
                   wall_s=round(wall, 3))
        return out

    def write(self, summary: Path) -> None:
        """Add ``unplaced_cpu`` (``finish()``) to a written ``summary.json``."""
        if summary.is_file():
            data = json.loads(summary.read_text())
            data["unplaced_cpu"] = self.finish()
            summary.write_text(json.dumps(data, indent=2))


__all__ = ["CpuAccount"]
