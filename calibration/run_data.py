"""What the two fits of recorded runs share: ``calibration.from_run`` (one run) and
``calibration.multi_run`` (sharing factors from further runs).

The result types (``StageFit`` per stage, ``RunCalibration`` per fit) and the readers of a run
directory: its trace events, sample records and weight-sync spans (``_read_run``), how long a
sync stopped generation (``_paused``, ``_pause_interval``), the scatter of measured over fitted
times (``_cv``), who was busy on which device (``_crowd``, a ``DeviceCrowd`` from the run's
layout) and which pairs of roles were busy on one device together, for how long (``_PairOverlap``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asyncopd.config import OPDConfig, load_config
from asyncopd.config.colocation import role_of
from asyncopd.config.placement import placement
from asyncopd.config.unplaced import background_load
from asyncopd.trace.schema import read_jsonl, read_trace
from calibration.contention import INSEPARABLE, MIN_PAIR_SPANS, DeviceCrowd, busy_intervals, merge


@dataclass
class StageFit:
    params: dict[str, Any]  # numbers, and colocation_pairs: {pair: phi}
    mape: float
    n: int
    sq_rel_err: float = 0.0  # mean squared relative residual (what the contention fit minimises)


@dataclass
class RunCalibration:
    run_dir: str
    stages: dict[str, StageFit] = field(default_factory=dict)
    extra_runs: list[str] = field(default_factory=list)  # fit_runs: runs that only lent sharing factors
    pair_sources: dict[str, str] = field(default_factory=dict)  # pair -> the run its phi came from
    notes: list[str] = field(default_factory=list)  # what the fit could not see

    def costs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fit in self.stages.values():
            out.update(fit.params)
        return out

    def as_dict(self) -> dict[str, Any]:
        extra = {"sharing_runs": self.extra_runs, "pair_sources": self.pair_sources} if self.extra_runs else {}
        extra.update({"notes": self.notes} if self.notes else {})
        return {"source_run": self.run_dir, **extra,
                "fit": {k: {"params": v.params, "mape": v.mape, "n": v.n} for k, v in self.stages.items()},
                "sim": {"costs": self.costs()}}


def _spans(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and e.get("name") == name]


def _paused(sync_span: dict[str, Any]) -> float:
    """Seconds the worker stopped generating for this sync (``paused_s``: recorded by the
    simulator and, for the torch backend, by the trainer); otherwise the whole span, an upper
    bound."""
    paused = sync_span["args"].get("paused_s")
    return float(paused) if paused is not None else sync_span["dur"] / 1e6


def _pause_interval(sync_span: dict[str, Any]) -> tuple[float, float]:
    """When the worker stood still for this sync: the last ``_paused`` seconds of the span."""
    end = (sync_span["ts"] + sync_span["dur"]) / 1e6
    return end - _paused(sync_span), end


def _crowd(run_dir: Path, events: list[dict[str, Any]], syncs: list[dict[str, Any]]) -> DeviceCrowd | None:
    """Who was busy on which device, from the run's layout (``config.yaml``) and its trace;
    None when the run has no config (then stage times are taken as measured)."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return None
    busy = busy_intervals(events)
    for s in syncs:  # loading weights occupies the rollout worker's devices too
        busy.setdefault(s["args"]["worker"], []).append(_pause_interval(s))
    busy = {w: merge(iv) for w, iv in busy.items()}
    cfg = load_config(cfg_file)
    where = placement(cfg.layout)
    costs = cfg.sim.costs.model_copy(update={"unplaced_share": run_unplaced_share(run_dir, cfg) or 0.0})
    return DeviceCrowd(busy, where, background_load(costs, cfg.cluster, where))


def run_unplaced_share(run_dir: Path, cfg: OPDConfig | None = None) -> float | None:
    """The unplaced load a run's spans carry on a CPU cluster: measured (``unplaced_share``), or
    for a simulated run the ``sim.costs.unplaced_share`` it ran with; None on GPUs or without a
    config (``cfg``: the run's, when already loaded)."""
    if cfg is None:
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.is_file():
            return None
        cfg = load_config(cfg_file)
    if cfg.cluster.device_type != "cpu":
        return None
    measured = unplaced_share(run_dir)
    return cfg.sim.costs.unplaced_share if measured is None else measured


def unplaced_cpu(run_dir: Path) -> dict[str, Any]:
    """A real run's ``summary.json`` ``unplaced_cpu`` (``asyncopd/runtime/cpu_accounting.py``);
    empty for simulated or older runs."""
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("unplaced_cpu") or {}
    except (OSError, ValueError):
        return {}


def unplaced_share(run_dir: Path) -> float | None:
    """The share of one core the run's unplaced work took (``unplaced_cpu``: the driver process
    and Ray's system processes; ``asyncopd/config/unplaced.py``); None for simulated or older runs."""
    cpu = unplaced_cpu(run_dir)
    if "driver_share" not in cpu:
        return None
    return min(0.95, float(cpu["driver_share"]) + float(cpu.get("ray_system_share") or 0.0))


def _read_run(d: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A run directory's trace events, sample records and sync spans."""
    events = read_trace(d / "trace.json")
    return events, read_jsonl(d / "samples.jsonl"), _spans(events, "sync")


@dataclass
class _PairOverlap:
    """Over the busy spans of shared workers: per pair of roles the seconds and the number of
    spans its workers were busy together, per (pair, role of the span) those seconds, and per
    role the seconds of its spans."""
    seen: dict[str, float]
    spans: dict[str, int]
    by_role: dict[tuple[str, str], float]
    total: dict[str, float]

    @classmethod
    def of(cls, crowd: DeviceCrowd, events: list[dict[str, Any]]) -> "_PairOverlap":
        ov = cls(defaultdict(float), defaultdict(int), defaultdict(float), defaultdict(float))
        for e in events:
            if e.get("ph") == "X" and e.get("name") in ("train", "score", "generate") \
                    and e["args"]["worker"] in crowd.shared:
                worker, t0, t1 = e["args"]["worker"], e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6
                ov.total[role_of(worker)] += t1 - t0
                for pair, sec in crowd.overlap(worker, t0, t1).items():
                    ov.seen[pair] += sec
                    ov.spans[pair] += 1
                    ov.by_role[(pair, role_of(worker))] += sec
        return ov

    def shown(self) -> dict[str, float]:
        """Pairs whose workers were busy together during at least ``MIN_PAIR_SPANS`` spans ->
        the seconds they were, most first."""
        return {p: self.seen[p] for p in sorted(self.seen, key=lambda p: -self.seen[p])
                if self.spans[p] >= MIN_PAIR_SPANS}

    def inseparable(self) -> dict[str, float]:
        """Pairs whose workers of *every* role in the pair spent at least ``INSEPARABLE`` of
        their busy time together -> the smallest such share. No span of theirs ran without the
        other, so the run cannot tell the pair's ``phi`` from the roles' costs (``fit_runs``)."""
        out = {}
        for pair in self.spans:
            share = min(self.by_role[(pair, r)] / self.total[r] if self.total[r] else 0.0
                        for r in set(pair.split("+")))
            if share >= INSEPARABLE:
                out[pair] = share
        return out


def _cv(x: np.ndarray) -> float:
    """Coefficient of variation of a lognormal fitted robustly to ``x`` (rounded to 0.01):
    ``sigma = 1.4826 * MAD(log x)``, ``cv = sqrt(exp(sigma^2) - 1)``. The median absolute
    deviation ignores the rare stalls (first syncs, garbage collections) that would otherwise
    dominate a plain standard deviation. An exact model gives 0."""
    x = x[x > 0]
    if len(x) < 2:
        return 0.0
    logs = np.log(x)
    sigma = 1.4826 * float(np.median(np.abs(logs - np.median(logs))))
    return round(float(np.sqrt(np.expm1(sigma * sigma))), 2)
