"""Simulate candidates in parallel and narrow them down by successive halving.

Every candidate (a layout and a policy that fit in memory) is simulated in memory with the
SimPy driver (``SimDriver(cfg, None, progress=False)``) in a ``ProcessPoolExecutor`` (``jobs``
processes; 1: in this process). When simulating all of them at the final length costs no more
than successive halving over a full budget (``n * final_steps <= 2 * budget * screen_steps``)
they are all simulated at the final length (*exhaustive*). Otherwise, *successive halving* over the simulation length:

    round 0: every candidate, ``screen_steps`` learner updates;
    round r: the best ``max(finalists, ceil(n_{r-1} / eta))`` of round r-1 (by tokens/s, among
             those meeting the staleness constraints), plus the ``keep_sync`` best ``sync``
             candidates (so the synchronous baseline is measured at the final length too) and
             the best candidate of every colocation (so the report compares them), at
             ``growth`` times the previous length (at most ``final_steps // 2``) -- and at
             ``final_steps`` once no more than those finalists remain.

With 512 candidates and the defaults (eta 4, growth 2, 1 then 2, 4 and 12 steps) the rounds
cost about 512 + 264 + 150 + 150 simulated learner updates instead of 512 x 12.

Short runs are noisy estimates (the pipeline is still filling), so each round only drops
what is clearly behind; the ranking reported is that of the final-length runs.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable

from asyncopd.config.schema import OPDConfig
from asyncopd.planner.bounds import Bound
from asyncopd.planner.candidates import candidate_tree
from asyncopd.planner.memory import MemoryCheck
from asyncopd.planner.space import Layout
from sim.driver import SimDriver

_BASE: dict[str, Any] | None = None
_SEED: int = 0


@dataclass(eq=False)
class Candidate:
    key: int
    layout: Layout
    policy: str
    mem: MemoryCheck
    bound: Bound
    slots: int
    result: dict[str, Any] | None = None  # metrics of its longest simulation
    steps: int = 0  # learner steps of that simulation
    history: list[tuple[int, float]] = field(default_factory=list)  # (steps, tokens/s)
    status: str = ""
    interval: Any = None  # sim.intervals.Interval of samples/s at the final length (planner/intervals.py)

    @property
    def is_sync(self) -> bool:
        return self.policy == "sync"

    @property
    def bound_value(self) -> float:
        return self.bound.sync if self.is_sync else self.bound.pipelined

    @property
    def throughput(self) -> float:
        """What the planner ranks by: consumed tokens per second. Samples per second would
        favour policies that drop or reorder long responses (an eviction cap, completion order
        in a short run) without doing more work."""
        return (self.result or {}).get("tokens_per_s", 0.0) if not self.error else 0.0

    @property
    def error(self) -> str:
        return (self.result or {}).get("error", "")


def metrics(s: dict[str, Any]) -> dict[str, Any]:
    """The numbers the planner keeps from a simulation summary. Staleness: ``mean`` is the
    mean over consumed samples of their token-weighted mean staleness; ``p95`` and ``max`` are
    over the per-sample maximum (the ``hist`` of the summary)."""
    st = s.get("staleness") or {}
    hist = sorted((int(k), int(v)) for k, v in (st.get("hist") or {}).items())
    total, seen, p95 = sum(v for _, v in hist), 0, 0
    for k, v in hist:
        seen += v
        if seen >= 0.95 * total:
            p95 = k
            break
    util = s.get("utilisation") or {}
    return {
        "ok": bool(s.get("ok")), "reason": s.get("reason", ""),
        "samples_per_s": float(s.get("samples_per_s") or 0.0), "tokens_per_s": float(s.get("tokens_per_s") or 0.0),
        "duration_s": float(s.get("duration_s") or 0.0), "steps": int(s.get("steps") or 0),
        "staleness_mean": float(st.get("mean") or 0.0), "staleness_p95": p95,
        "staleness_max": hist[-1][0] if hist else 0,
        "util_rollout": float(util.get("rollout", 0.0)), "util_teacher": float(util.get("teacher", 0.0)),
        "util_learner": float(util.get("learner", 0.0)),
        "evicted": int((s.get("sample_status") or {}).get("evicted", 0)), "sim_wall_s": float(s.get("sim_wall_s", 0)),
    }


def _init_worker(base: dict[str, Any], seed: int) -> None:
    global _BASE, _SEED
    _BASE, _SEED = base, seed


def _run_one(job: tuple) -> tuple[int, int, dict[str, Any]]:
    """Simulate one candidate (in a pool process): ``(key, layout section, policy, share, steps)``."""
    key, layout, policy, share, steps = job
    assert _BASE is not None, "planner worker not initialised"
    c0 = time.process_time()
    try:
        cfg = OPDConfig.model_validate(candidate_tree(_BASE, layout, policy, share, steps))
        out = metrics(SimDriver(cfg, None, seed=_SEED, progress=False).run())
        if not out["ok"]:
            out["error"] = f"simulation stopped: {out['reason']}"
    except Exception as e:  # a candidate the simulator refuses is reported, not fatal
        out = {"error": f"{type(e).__name__}: {e}"}
    out["cpu_s"] = time.process_time() - c0
    return key, steps, out


class Evaluator:
    """Runs simulations of candidates, in a process pool when ``jobs > 1``."""

    def __init__(self, base: dict[str, Any], seed: int, jobs: int = 2,
                 on_done: Callable[[], None] | None = None) -> None:
        self.base, self.seed, self.jobs, self.on_done = base, seed, max(1, jobs), on_done
        self.pool: ProcessPoolExecutor | None = None
        self.simulations = 0
        self.cpu_s = 0.0  # CPU seconds of the simulations (whichever process ran them)

    def __enter__(self) -> "Evaluator":
        if self.jobs > 1:
            self.pool = ProcessPoolExecutor(self.jobs, initializer=_init_worker, initargs=(self.base, self.seed))
        else:
            _init_worker(self.base, self.seed)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, cands: list[Candidate], steps: int) -> None:
        by_key = {c.key: c for c in cands}
        jobs = [(c.key, c.layout.section(), c.policy, c.mem.rollout_share, steps) for c in cands]
        if self.pool is None:
            results = (_run_one(j) for j in jobs)
        else:
            results = (f.result() for f in as_completed([self.pool.submit(_run_one, j) for j in jobs]))
        for key, n, out in results:
            c = by_key[key]
            c.result, c.steps = out, n
            c.history.append((n, out.get("tokens_per_s", 0.0)))
            self.simulations += 1
            self.cpu_s += out.get("cpu_s", 0.0)
            if self.on_done:
                self.on_done()


def violation(c: Candidate, max_mean: float | None, max_stale: int | None) -> str:
    """Why a simulated candidate breaks the constraints ('' if it does not)."""
    if c.error:
        return c.error
    r = c.result or {}
    if max_mean is not None and r.get("staleness_mean", 0.0) > max_mean + 1e-12:
        return f"mean staleness {r['staleness_mean']:.2f} > --max-mean-staleness {max_mean:g}"
    if max_stale is not None and r.get("staleness_max", 0) > max_stale:
        return f"per-sample staleness {r['staleness_max']} > --max-staleness {max_stale}"
    return ""


@dataclass
class SearchSettings:
    final_steps: int = 12
    screen_steps: int = 1
    eta: int = 4  # keep 1/eta per round
    growth: int = 2  # simulation length x growth per round
    finalists: int = 8
    keep_sync: int = 2
    budget: int = 512
    max_mean_staleness: float | None = None
    max_staleness: int | None = None


def successive_halving(cands: list[Candidate], ev: Evaluator, s: SearchSettings,
                       on_round: Callable[[int, int], None] | None = None) -> tuple[str, list[tuple[int, int, float]]]:
    """Simulate ``cands`` (module docstring); set each candidate's ``status``. Returns the mode
    (``exhaustive`` / ``successive halving``) and the rounds as (steps, candidates, wall seconds)."""
    final = max(1, s.final_steps)
    # Exhaustive when that costs no more than successive halving over a full budget would
    # (about 2x a screening round, see the module docstring). Screening is also blind to the
    # policy: one learner update looks the same under sync and every async policy, so a small
    # space is better simulated at the final length than screened.
    exhaustive = len(cands) <= s.finalists or len(cands) * final <= 2 * s.budget * max(1, s.screen_steps)
    steps = final if exhaustive else min(final, max(1, s.screen_steps))
    n_final = s.finalists + s.keep_sync + 5  # finalists, kept sync ones, best of each colocation
    pool, rounds = list(cands), []
    while pool:
        if on_round:
            on_round(steps, len(pool))
        t0 = time.perf_counter()
        ev.run(pool, steps)
        rounds.append((steps, len(pool), time.perf_counter() - t0))
        if steps >= final:
            break
        pool = _promote(pool, steps, s)
        steps = final if len(pool) <= n_final else min(max(steps, final // 2), steps * max(2, s.growth))
    for c in pool:
        why = violation(c, s.max_mean_staleness, s.max_staleness)
        c.status = why or "final"
    return ("exhaustive" if exhaustive else "successive halving"), rounds


def _promote(pool: list[Candidate], steps: int, s: SearchSettings) -> list[Candidate]:
    good = sorted((c for c in pool if not violation(c, s.max_mean_staleness, s.max_staleness)),
                  key=lambda c: -c.throughput)
    keep = good[:max(s.finalists, math.ceil(len(pool) / max(2, s.eta)))]
    kept = {c.key for c in keep}
    keep += [c for c in good if c.is_sync and c.key not in kept][:max(0, s.keep_sync - sum(c.is_sync for c in keep))]
    for kind in sorted({c.layout.colocation for c in good} - {c.layout.colocation for c in keep}):
        keep.append(next(c for c in good if c.layout.colocation == kind))  # the best of every colocation
    kept = {c.key for c in keep}
    for c in pool:
        if c.key not in kept:
            why = violation(c, s.max_mean_staleness, s.max_staleness)
            c.status = f"screened out at {steps} steps" + (f" ({why})" if why else "")
    return keep
