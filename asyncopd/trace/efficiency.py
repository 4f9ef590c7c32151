"""A run's efficiency against its pipeline's bound: how close it came to its busiest device.

**The bound.** Worker ``w`` runs on the devices ``D(w)`` its layout gives it
(``config/placement.py``) and, per sample the run consumes, does ``c_w`` seconds of work while
holding all of them. A device does at most one second of work per second, so with the per-sample
load of device ``d``

    l_d = sum_{w : d in D(w)} c_w                  (seconds of device d per consumed sample)

no schedule of this work passes ``X_bound = 1 / max_d l_d`` samples/s: that is the slowest
stage running alone, where stages that share a device add up. A run of ``N`` samples in ``T``
seconds has efficiency

    eta = X / X_bound = (N / T) max_d l_d = max_d (L_d / T)

the busiest device's work ``L_d = N l_d`` over the wall time. Time slicing a shared device
costs nothing here (work adds); a neighbour's interference (caches, memory bandwidth) does not
count against the bound when ``c_w`` is measured alone, and does when it is measured in the run.

**Where ``c_w`` comes from.**

- *In the run* (``work_from_trace``, written to every trained run's ``summary.json`` as
  ``efficiency``): each worker's own CPU seconds, which do not count the time it waited for a
  core or for Ray — rollout waves' ``wave_cpu_s`` (once per wave) or, under continuous batching,
  each sample's ``cpu_s`` share, ``cpu_s`` of each teacher and learner span, ``paused_s`` of each weight load; a span without CPU time (a GPU worker) counts
  its wall time. All work counts, aborted or evicted samples' too.
- *Alone* (``asyncopd bound CONFIG``, ``calibration/bound.py``): each stage's real work timed
  with nothing else running.

**Where the rest goes** (``breakdown``), for the devices' workers over the wall time ``T``:
``work`` (their CPU seconds), ``waiting`` (inside their spans but not working: descheduled
by another process on the core, such as the driver or Ray, or blocked), and ``idle`` (no span
open: the worker waits for its next call — dispatch, the answer's way back, the driver's
handling, an admission gate, a batch to fill). On a shared device the spans' union counts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from asyncopd.config.placement import placement
from asyncopd.config.schema import OPDConfig
from asyncopd.trace.schema import read_json, read_trace

ROLE_SPANS = ("generate", "score", "train", "sync")


def device_loads(work_per_sample: Mapping[str, float], placement: Mapping[str, Iterable[int]]) -> dict[int, float]:
    """``l_d`` (module docstring): per-sample seconds of each device, summed over its workers."""
    loads: dict[int, float] = defaultdict(float)
    for worker, devices in placement.items():
        for d in devices:
            loads[d] += work_per_sample.get(worker, 0.0)
    return dict(loads)


def bound_of(work_per_sample: Mapping[str, float], placement: Mapping[str, Iterable[int]]) -> dict[str, Any]:
    """``X_bound = 1 / max_d l_d`` with the busiest device and its workers."""
    placement = {w: tuple(d) for w, d in placement.items()}
    loads = device_loads(work_per_sample, placement)
    if not loads or max(loads.values()) <= 0:
        raise ValueError("no work recorded on any device: the bound is undefined")
    device = max(sorted(loads), key=lambda d: loads[d])
    return {"samples_per_s": 1.0 / loads[device], "device": device,
            "workers": sorted(w for w, ds in placement.items() if device in ds),
            "device_s_per_sample": {str(d): loads[d] for d in sorted(loads)}}


def work_from_trace(events: Iterable[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """Each worker's work in seconds (module docstring) and its spans ``(start_s, end_s)``;
    a rollout wave (the samples one ``generate`` call returned: same worker, same start) counts once."""
    work: dict[str, float] = defaultdict(float)
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    waves: set[tuple[str, float]] = set()
    for e in events:
        name, args = e.get("name"), e.get("args") or {}
        worker = args.get("worker")
        if name not in ROLE_SPANS or e.get("ph") != "X" or worker is None:
            continue
        start, dur = e["ts"] / 1e6, e.get("dur", 0.0) / 1e6
        if name == "generate" and "cpu_s" in args:  # (continuous batching: its own share)
            cpu = args["cpu_s"]
        elif name == "generate":
            if (worker, start) in waves:  # one event per sample; the wave's wall is its longest
                spans[worker].append((start, start + dur))
                continue
            waves.add((worker, start))
            cpu = args.get("wave_cpu_s")
        elif name == "sync":
            cpu = args.get("paused_s")
        else:
            cpu = args.get("cpu_s")
        work[worker] += dur if cpu is None else cpu
        spans[worker].append((start, start + dur))
    return dict(work), dict(spans)


def union_s(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def breakdown(wall_s: float, work_s: float, spans: Iterable[tuple[float, float]]) -> dict[str, float]:
    """Shares of the wall time: ``work``, ``waiting`` (spans open, no work) and ``idle``."""
    busy = min(union_s(spans), wall_s)
    work = min(work_s, busy)
    return {"work": work / wall_s, "waiting": (busy - work) / wall_s, "idle": (wall_s - busy) / wall_s}


def efficiency(samples: int, wall_s: float, work: Mapping[str, float], spans: Mapping[str, list[tuple[float, float]]],
               placement: Mapping[str, Iterable[int]]) -> dict[str, Any]:
    """The run's bound from its own work, its efficiency, and where the bottleneck device's
    time went (module docstring)."""
    if samples <= 0 or wall_s <= 0:
        raise ValueError("no samples consumed: the efficiency is undefined")
    placement = {w: tuple(d) for w, d in placement.items()}
    b = bound_of({w: s / samples for w, s in work.items()}, placement)
    on_device = b["workers"]
    b.update(
        source="work measured in the run (CPU seconds of each worker)",
        efficiency=(samples / wall_s) / b["samples_per_s"],
        breakdown=breakdown(wall_s, sum(work.get(w, 0.0) for w in on_device),
                            [s for w in on_device for s in spans.get(w, [])]),
        work_s={w: round(v, 4) for w, v in sorted(work.items())},
    )
    return b


def run_efficiency(run_dir: str | Path) -> dict[str, Any]:
    """``efficiency`` of a finished run directory (its trace, layout and summary)."""
    d = Path(run_dir)
    cfg = OPDConfig.model_validate(read_json(d / "run.json")["config"])
    summary = read_json(d / "summary.json")
    work, spans = work_from_trace(read_trace(d / "trace.json"))
    return efficiency(summary["samples_consumed"], summary["duration_s"], work, spans, placement(cfg.layout))


def with_measured_bound(eff: dict[str, Any], samples_per_s: float, bound: Mapping[str, Any]) -> dict[str, Any]:
    """Add the efficiency against a bound measured alone (``asyncopd bound --out FILE``)."""
    out = dict(eff)
    out["measured_bound"] = {"samples_per_s": bound["samples_per_s"], "device": bound["device"],
                             "workers": bound["workers"], "efficiency": samples_per_s / bound["samples_per_s"]}
    return out


def add_to_summary(run_dir: str | Path) -> dict[str, Any]:
    """Compute the run's efficiency and write it into its ``summary.json``; return the summary."""
    path = Path(run_dir) / "summary.json"
    summary = json.loads(path.read_text())
    if not summary.get("samples_consumed") or not summary.get("duration_s"):
        return summary  # (a run that stopped before its first sample has no efficiency)
    summary["efficiency"] = run_efficiency(run_dir)
    path.write_text(json.dumps(summary, indent=2))
    return summary
