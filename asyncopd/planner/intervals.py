"""Prediction intervals for a plan's throughput (``sim/intervals.py``), per final candidate.

The ranked top ``top`` candidates and the best ``sync`` one are simulated again at the final
length with ``seeds - 1`` more seeds (``seed + 1, seed + 2, ...``), so their interval holds the
workload's spread over seeds as well as the run-to-run scatter ``sim.costs.run_cv``; every
other final candidate gets the one-seed interval (the run factor only), which is narrower
than it should be and says so (``interval_seeds`` = 1 in ``plan.csv``). The ranking itself
still uses the first seed, so adding intervals never changes which layout is chosen.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

from asyncopd.planner.search import Candidate, Evaluator
from sim.intervals import costs_interval


def add_intervals(res: Any, base_tree: dict[str, Any], seed: int, *, seeds: int = 3, top: int = 3,
                  level: float = 0.9, on_done: Optional[Callable[[], None]] = None) -> int:
    """Attach ``interval`` (``sim.intervals.Interval`` of samples/s) to every final-length
    candidate of ``res`` (a ``PlanResult``); returns the extra simulations run."""
    steps = res.options.steps
    final = [c for c in res.candidates if c.steps == steps and not c.error and c.result]
    chosen: list[Candidate] = []
    for c in [*res.ranked()[:top], res.best_sync]:
        if c is not None and c in final and c not in chosen:
            chosen.append(c)
    more: dict[int, list[float]] = {c.key: [] for c in chosen}
    extra = 0
    for k in range(1, seeds if chosen else 1):
        clones = [replace(c, result=None, steps=0, history=[]) for c in chosen]
        with Evaluator(base_tree, seed + k, res.options.jobs, on_done=on_done) as ev:
            ev.run(clones, steps)
            extra += ev.simulations
        for cl in clones:
            if cl.result and not cl.error:
                more[cl.key].append(cl.result["samples_per_s"])
    costs = res.base.sim.costs
    for c in final:
        rates = [c.result["samples_per_s"], *more.get(c.key, [])]
        if rates[0] > 0:
            c.interval = costs_interval(rates, costs, level)
    return extra


__all__ = ["add_intervals"]
