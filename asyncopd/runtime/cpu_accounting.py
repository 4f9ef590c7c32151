"""CPU time of the work no layout places: the driver process and Ray's own processes.

A layout pins rollout, teacher and learner actors to their devices; the driver (controller,
recorder, the Ray calls it makes) and Ray's system processes (GCS server, raylet, log monitor,
...) run unpinned, taking CPU from whichever cores are free or from the placed workers. Over a
run the tool records, from ``/proc`` through psutil,

    driver_s      CPU seconds of the driver process (all its threads)
    driver_main_s ... of its main thread alone: the controller, the recorder and the Ray calls
                  it makes, one event at a time (the rest is Ray's threads in the driver)
    ray_system_s  CPU seconds of the driver's descendant processes that are not actor workers
    actors_s      CPU seconds of the actor worker processes (``ray::...``): the placed work,
                  including what runs outside their recorded spans (Ray's threads in the actor)

``driver_event_s`` the main thread's CPU seconds per answer it handled, by kind (``generate``:
                  per finished sample of a wave; ``score``: per scored batch; ``train``: per
                  update; ``sync``: per weight sync), including the actions each caused and the
                  next wave it started
``driver_event_wall_s`` the same in wall-clock seconds: what the driver is busy for, and what
                  the simulator's driver queue charges (``sim/driver.py``). The unpinned driver
                  shares busy cores with the placed workers, so it is descheduled part of the
                  time: on the 2-core host a wave's handling took 1.9x its CPU time

and their shares of one core over the run's wall time, into ``summary.json``
(``unplaced_cpu``); beside it ``call_latency``, the Ray calls' transit from the driver's
submission to the worker's start (``calls``: ``runtime/call_latency.py``). The shares tell how
much of a core the simulator's devices never see; a process that exits mid-run is counted up
to its last sample.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from asyncopd.runtime.call_latency import KINDS, CallLatency


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
        self._main0 = time.thread_time()  # (constructed and finished on the driver's main thread)
        self._before = self._snapshot()
        self._kinds: dict[str, list[float]] = {}  # kind -> [main-thread CPU seconds, answers, wall seconds]
        self.calls = CallLatency()

    @contextmanager
    def handling(self, kind: str, count: int = 1) -> Iterator[None]:
        """Time the main thread's handling of ``count`` answers of ``kind`` (``gen`` is counted
        per sample as ``generate``; kinds outside ``KINDS``, e.g. a sync's serving side, are
        counted under their own name and not given to the simulator)."""
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            acc = self._kinds.setdefault(KINDS.get(kind, kind), [0.0, 0, 0.0])
            acc[0] += time.thread_time() - c0
            acc[1] += max(1, count)
            acc[2] += time.perf_counter() - w0

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
        totals["driver_main"] = time.thread_time() - self._main0
        out = {f"{k}_s": round(v, 3) for k, v in totals.items()}
        out.update({f"{k}_share": round(v / wall, 4) if wall > 0 else 0.0 for k, v in totals.items()},
                   wall_s=round(wall, 3))
        placed = {k: v for k, v in self._kinds.items() if v[1] and k in KINDS.values()}
        out["driver_event_s"] = {k: round(cpu / n, 7) for k, (cpu, n, _wall) in placed.items()}
        out["driver_event_wall_s"] = {k: round(wall / n, 7) for k, (_cpu, n, wall) in placed.items()}
        out["driver_events"] = {k: n for k, (_cpu, n, _wall) in self._kinds.items()}
        return out

    def write(self, summary: Path) -> None:
        """Add ``unplaced_cpu`` (``finish()``) to a written ``summary.json``."""
        if summary.is_file():
            data = json.loads(summary.read_text())
            data["unplaced_cpu"] = self.finish()
            data["call_latency"] = self.calls.summary()
            summary.write_text(json.dumps(data, indent=2))


__all__ = ["CpuAccount"]
