"""The planner end to end: config -> layouts x policies -> memory -> bounds -> simulations -> ranking.

    cfg = planner_config("configs/h100x8-qwen3.yaml", devices=64)
    result = plan_cluster(cfg, PlanOptions(max_mean_staleness=1.0))
    result.best, result.speedup(result.best), result.chosen_config()

Steps: enumerate the layouts of ``cluster.num_devices`` devices (``space``), drop those that
do not fit in memory with the reason (``memory``), pair the rest with the policies, rank them by
their optimistic throughput (``bounds``) and keep the best ``budget_layouts`` when there are
more, then simulate them (``search``: exhaustive or successive halving). The ranking is over the
final-length simulations that meet the staleness constraints; the speedup is over the best
``sync`` candidate at the same length.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from asyncopd.catalog.hardware import Hardware, UnknownHardwareError, get_hardware
from asyncopd.config.colocation import Sharing, measured_pairs, shared_pairs
from asyncopd.config.loader import load_config
from asyncopd.config.placement import placement
from asyncopd.config.schema import OPDConfig
from asyncopd.planner.bounds import layout_bound
from asyncopd.planner.candidates import candidate_config
from asyncopd.planner.memory import check_memory
from asyncopd.planner.intervals import add_intervals
from asyncopd.planner.search import (
    Candidate,
    Evaluator,
    SearchSettings,
    successive_halving,
    violation,
)
from asyncopd.planner.space import Layout, SpaceOptions, enumerate_layouts, policy_grid
from asyncopd.planner.workload import Workload
from calibration.profile import profile_overrides
from sim.cost_model import CostModel
from sim.costs import make_cost_model

PLACEHOLDER_LAYOUT = ("layout={rollout: {workers: 1, devices: [0], tp: 1}, teacher: {workers: 1, devices: [0], tp: 1}, "
                      "learner: {workers: 1, devices: [0], tp: 1}}")


def planner_config(path: str | Path | None, overrides: list[str] | tuple = (), *, devices: Optional[int] = None,
                   hardware: Optional[str] = None, costs: Optional[str | Path] = None) -> OPDConfig:
    """The base config the planner varies: ``path`` + ``--set`` overrides, then the cluster
    (``devices``: ``cluster.num_devices``; ``hardware``: ``cluster.hardware``, the device type
    it implies and the analytic cost model; ``costs``: a calibration profile's ``sim.costs`` and
    the parametric cost model). The layout is replaced by a placeholder (the planner chooses it).
    Raises ConfigError / ValueError / FileNotFoundError with a message naming the field."""
    extra: list[str] = []
    if costs is not None:
        extra += [*profile_overrides(costs), "sim.cost_model=parametric"]
    extra += list(overrides or [])
    if devices is not None:
        if devices < 1:
            raise ValueError(f"--devices must be >= 1, got {devices}")
        extra.append(f"cluster.num_devices={devices}")
    if hardware is not None:
        try:
            hw = get_hardware(hardware)
        except UnknownHardwareError as e:
            raise ValueError(f"--hardware: {e}") from None
        extra += [f"cluster.hardware={hw.name}", f"cluster.device_type={'cpu' if hw.name == 'cpu' else 'cuda'}"]
        if costs is None:
            extra.append("sim.cost_model=analytic")
    return load_config(path, [*extra, PLACEHOLDER_LAYOUT])


@dataclass
class PlanOptions:
    max_mean_staleness: Optional[float] = None
    max_staleness: Optional[int] = None
    memory_headroom: float = 0.1
    budget_layouts: int = 512
    steps: int = 12
    screen_steps: int = 1
    finalists: int = 8
    eta: int = 4
    policies: Optional[list[str]] = None
    jobs: int = 2
    seed: Optional[int] = None
    tolerance: float = 0.01
    interval_seeds: int = 3  # seeds behind the prediction intervals of the top candidates (planner/intervals.py)
    interval_top: int = 3
    level: float = 0.9

    def check(self) -> None:
        """Raise ValueError naming the option when one is out of range."""
        if not 0 <= self.memory_headroom < 1:
            raise ValueError(f"--memory-headroom must be in [0, 1), got {self.memory_headroom}")
        if self.max_mean_staleness is not None and self.max_mean_staleness < 0:
            raise ValueError(f"--max-mean-staleness must be >= 0, got {self.max_mean_staleness}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"--max-staleness must be >= 0, got {self.max_staleness}")
        if not 0.5 <= self.level < 1:
            raise ValueError(f"--level must be in [0.5, 1), got {self.level}")
        for name in ("budget_layouts", "steps", "screen_steps", "finalists", "jobs", "interval_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"--tolerance must be in [0, 1), got {self.tolerance}")
        if self.eta < 2:
            raise ValueError(f"--eta must be >= 2, got {self.eta}")
        policy_grid(self.max_staleness, self.policies)  # raises on a bad policy string


@dataclass
class PlanResult:
    base: OPDConfig
    options: PlanOptions
    workload: Workload
    policies: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[tuple[Layout, str]] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)  # the simulated ones
    mode: str = ""
    rounds: list[tuple[int, int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    verified: dict[int, Any] = field(default_factory=dict)  # candidate key -> verify.Trial, best measured first

    def ranked(self) -> list[Candidate]:
        """Final-length candidates meeting the constraints, best first: by throughput, except
        that the first is the *chosen* one -- the lowest mean staleness (then fewest devices)
        among those within ``tolerance`` of the best throughput (simulations are not more
        precise than that, and staleness costs accuracy)."""
        final = sorted((c for c in self.candidates if c.status == "final"),
                       key=lambda c: (-c.throughput, (c.result or {}).get("staleness_mean", 0.0),
                                      c.layout.devices_used, c.key))
        if not final:
            return []
        if self.verified:  # measured on this machine (verify.py): the best measured contender
            chosen = next(c for c in final if c.key == next(iter(self.verified)))
        else:
            near = [c for c in final if c.throughput >= (1 - self.options.tolerance) * final[0].throughput]
            chosen = min(near, key=lambda c: ((c.result or {}).get("staleness_mean", 0.0), c.layout.devices_used,
                                              -c.throughput, c.key))
        return [chosen] + [c for c in final if c is not chosen]

    @property
    def best(self) -> Optional[Candidate]:
        r = self.ranked()
        return r[0] if r else None

    @property
    def best_sync(self) -> Optional[Candidate]:
        return next((c for c in self.ranked() if c.is_sync), None)

    def speedup(self, c: Candidate) -> Optional[float]:
        base = self.best_sync
        if base is None or c.steps != base.steps or not base.throughput:
            return None
        return c.throughput / base.throughput

    def chosen_config(self, c: Optional[Candidate] = None) -> OPDConfig:
        """The config of ``c`` (default: the best), with the base config's run length."""
        c = c or self.best
        if c is None:
            raise ValueError("no candidate met the constraints; nothing to write")
        return candidate_config(self.base, c.layout.section(), c.policy, c.mem.rollout_share)

    def unmeasured_pairs(self, c: Optional[Candidate] = None) -> list[str]:
        """Pairs of roles that ``c``'s layout (default: the best) puts on one device and that the
        cost model's ``colocation_pairs`` does not name: its prediction rests on the assumed
        ``colocation_factor`` for them (``asyncopd/config/colocation.py``)."""
        c = c or self.best
        if c is None:
            return []
        known = self.base.sim.costs.colocation_pairs
        return sorted(shared_pairs(placement(c.layout)) - measured_pairs(known))  # a planner Layout places like a config's

    def summary(self) -> dict[str, Any]:
        b, s = self.best, self.best_sync
        return {
            "devices": self.base.cluster.num_devices, "hardware": self.base.cluster.hardware,
            "device_type": self.base.cluster.device_type, "cost_model": self.base.sim.cost_model,
            "counts": self.counts, "mode": self.mode, "rounds": [{"steps": a, "candidates": n, "wall_s": t} for a, n, t in self.rounds],
            "wall_s": self.wall_s, "policies": self.policies,
            "constraints": {"max_mean_staleness": self.options.max_mean_staleness,
                            "max_staleness": self.options.max_staleness,
                            "memory_headroom": self.options.memory_headroom},
            "best": None if b is None else {"layout": b.layout.describe(), "policy": b.policy, **(b.result or {}),
                                            "speedup_vs_best_sync": self.speedup(b),
                                            "samples_per_s_interval": _interval(b)},
            "best_sync": None if s is None else {"layout": s.layout.describe(), **(s.result or {})},
            "unmeasured_pairs": self.unmeasured_pairs(),
            "verify": [t.as_dict() for t in self.verified.values()],
            "colocation_factor": self.base.sim.costs.colocation_factor,
        }


def _interval(c: Candidate) -> Optional[dict[str, float]]:
    iv = c.interval
    return None if iv is None else {"low": iv.low, "high": iv.high, "level": iv.level, "seeds": iv.seeds}


def _best_by_bound(cands: list[Candidate], n: int) -> list[Candidate]:
    """The ``n`` best by bound, at least ``n // (2 * kinds)`` of every colocation kind."""
    ranked = sorted(cands, key=lambda c: (-c.bound_value, c.key))
    kinds = sorted({c.layout.colocation for c in ranked})
    quota = n // (2 * max(1, len(kinds)))
    chosen = [c for k in kinds for c in [c for c in ranked if c.layout.colocation == k][:quota]]
    taken = {c.key for c in chosen}
    chosen += [c for c in ranked if c.key not in taken][:n - len(chosen)]
    return chosen


def prune_by_bound(cands: list[Candidate], budget: int, n_policies: int) -> list[Candidate]:
    """Keep ``budget`` candidates: those with the best optimistic throughput (``bounds``), with
    ``sync`` taking its proportional share (it is the baseline) and every colocation kind at
    least a share of each, so the search is not spent on one kind of layout."""
    sync = [c for c in cands if c.is_sync]
    rest = [c for c in cands if not c.is_sync]
    n_sync = min(len(sync), max(2, budget // max(1, n_policies)))
    return _best_by_bound(sync, n_sync) + _best_by_bound(rest, budget - n_sync)


def _space_options(cfg: OPDConfig, w: Workload, hw: Hardware, costs: CostModel) -> SpaceOptions:
    """Tensor-parallel degrees are searched only when the cost model depends on them."""
    per_node = hw.devices_per_node
    tps = tuple(t for t in (1, 2, 4, 8, 16) if t <= per_node) if costs.layout_sensitive else (1,)
    return SpaceOptions(num_devices=cfg.cluster.num_devices, devices_per_node=per_node,
                        student_heads=w.student.num_heads, teacher_heads=w.teacher.num_heads, tp_values=tps,
                        rollout_oversubscription=(1, 2) if w.batching == "wave" else (1,))


def plan_candidates(cfg: OPDConfig, o: PlanOptions) -> tuple[PlanResult, list[Candidate], int]:
    """The planner up to its simulations: the layouts that fit in memory, paired with the
    policies and pruned by bound to ``o.budget_layouts`` (``res.counts`` and ``res.rejected``
    filled in). Returns the result so far, the candidates to simulate and the seed."""
    o.check()
    seed = cfg.run.seed if o.seed is None else o.seed
    hw = get_hardware(cfg.cluster.hardware)
    w = Workload.from_config(cfg, seed)
    policies = policy_grid(o.max_staleness, o.policies)
    res = PlanResult(base=cfg, options=o, workload=w, policies=policies)
    base_costs = make_cost_model(cfg)
    space = enumerate_layouts(_space_options(cfg, w, hw, base_costs))
    feasible: list[tuple[Layout, Any, Any, int]] = []
    for lay in space.layouts:
        mem = check_memory(lay, w, hw, o.memory_headroom, cfg.rollout.gpu_memory_utilization)
        if not mem.ok:
            res.rejected.append((lay, mem.reason))
            continue
        costs = base_costs.for_layout(lay.shape())
        capacity = costs.kv_capacity_seqs(w.prompt_tokens + w.max_new_tokens, mem.rollout_share)
        slots = w.max_num_seqs if capacity is None else min(w.max_num_seqs, capacity)
        if slots < 1:
            res.rejected.append((lay, f"rollout: no room for the KV cache of one {w.seq_max:.0f}-token sequence "
                                      f"next to the weights ({mem.rollout_share:.0%} of each device)"))
            continue
        feasible.append((lay, mem, layout_bound(lay, w, costs, slots, Sharing.of(cfg.sim.costs)), slots))
    cands = [Candidate(i * len(policies) + j, lay, p, mem, bound, slots)
             for i, (lay, mem, bound, slots) in enumerate(feasible) for j, p in enumerate(policies)]
    n_all = len(cands)
    if n_all > o.budget_layouts:
        cands = prune_by_bound(cands, o.budget_layouts, len(policies))
    res.counts = {"layouts": len(space.layouts) + space.skipped_node_crossing,
                  "skipped_node_crossing": space.skipped_node_crossing, "rejected_memory": len(res.rejected),
                  "feasible_layouts": len(feasible), "policies": len(policies), "candidates": n_all,
                  "pruned_by_bound": n_all - len(cands), "simulated": len(cands)}
    return res, cands, seed


def plan_cluster(cfg: OPDConfig, options: Optional[PlanOptions] = None, *, progress: bool = True) -> PlanResult:
    """Plan ``cfg``'s cluster (module docstring). No files are written here."""

    t0 = time.perf_counter()
    o = options or PlanOptions()
    res, cands, seed = plan_candidates(cfg, o)
    settings = SearchSettings(final_steps=o.steps, screen_steps=o.screen_steps, eta=o.eta, finalists=o.finalists,
                              budget=o.budget_layouts, max_mean_staleness=o.max_mean_staleness,
                              max_staleness=o.max_staleness)
    if cands:
        with tqdm(total=0, desc="plan", unit="sim", disable=not progress, leave=False) as bar:
            def on_round(steps: int, n: int) -> None:
                bar.total += n
                bar.set_description(f"plan: {n} x {steps} steps")
                bar.refresh()

            base_tree = cfg.model_dump(mode="json")
            with Evaluator(base_tree, seed, o.jobs, on_done=lambda: bar.update(1)) as ev:
                res.mode, res.rounds = successive_halving(cands, ev, settings, on_round)
            res.counts["simulations"] = ev.simulations
            res.counts["sim_cpu_s"] = round(ev.cpu_s, 2)
            res.candidates = cands
            on_round(o.steps, min(o.interval_top + 1, len(cands)) * (o.interval_seeds - 1))
            res.counts["interval_simulations"] = add_intervals(res, base_tree, seed, seeds=o.interval_seeds,
                                                               top=o.interval_top, level=o.level,
                                                               on_done=lambda: bar.update(1))
    res.candidates = cands
    res.counts["violations"] = sum(1 for c in cands if c.steps == o.steps and violation(
        c, o.max_mean_staleness, o.max_staleness))
    res.wall_s = time.perf_counter() - t0
    return res
