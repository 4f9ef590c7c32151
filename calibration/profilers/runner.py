"""Run the micro-benchmarks under a time budget and turn them into a calibration profile.

Budget: the stages run in order (decode, prefill, teacher, learner, sync); each gets a share of
what is left of ``budget_s`` (``SHARES``; time a stage does not use passes to the next). A
stage's grid is ordered so that any prefix spreads over it (``bench.spread``); a stage stops
taking points when its share is spent, but always measures its first ``MIN_POINTS`` (the
fewest that determine its fit), so a tiny budget still yields a complete profile, late.
Loading the models and making the rollouts the teacher and learner consume count against the
budget of the stage that first needs them. Each stage starts with one untimed run of its first
point (engine built, allocator and caches warm), so the first timed point is not an outlier.
Time left in a stage after its grid goes to further passes over the measured points (at most
``MAX_PASSES`` in all); a point's ``seconds`` is the median over its passes (``passes``).
"""

from __future__ import annotations

import time
from statistics import median
from typing import Any, Callable, Optional

from calibration.profilers import learner, rollout, sync, teacher
from calibration.profilers.bench import Bench

# stage -> (plan, measure, role whose devices it is pinned to)
STAGE_FUNCS: dict[str, tuple[Callable[[Bench], list[dict[str, Any]]], Callable[[Bench, dict[str, Any]], float], str]] = {
    "decode": (rollout.plan_decode, rollout.measure_decode, rollout.ROLE),
    "prefill": (rollout.plan_prefill, rollout.measure_prefill, rollout.ROLE),
    "teacher": (teacher.plan, teacher.measure, teacher.ROLE),
    "learner": (learner.plan, learner.measure, learner.ROLE),
    "sync": (sync.plan, sync.measure, sync.ROLE),
}
SHARES = {"decode": 0.3, "prefill": 0.1, "teacher": 0.2, "learner": 0.3, "sync": 0.1}
MIN_POINTS = {"decode": 4, "prefill": 2, "teacher": 2, "learner": 2, "sync": 2}
MAX_PASSES = 5


def plan_all(bench: Bench, stages: tuple[str, ...] = tuple(STAGE_FUNCS)) -> dict[str, list[dict[str, Any]]]:
    return {s: STAGE_FUNCS[s][0](bench) for s in stages}


def measure_plans(bench: Bench, plans: dict[str, list[dict[str, Any]]], budget_s: float, *,
                  limit: Optional[dict[str, int]] = None, progress: bool = True) -> list[dict[str, Any]]:
    """Measure the planned points (at most ``limit[stage]`` of each) within ``budget_s``; returns
    the points with their ``seconds``. Pins the process per stage; restores it at the end."""
    from tqdm.auto import tqdm

    todo = {s: specs[: (limit or {}).get(s, len(specs))] for s, specs in plans.items()}
    points: list[dict[str, Any]] = []
    t_end = time.perf_counter() + budget_s
    left_shares = sum(SHARES[s] for s in todo)
    bar = tqdm(total=sum(map(len, todo.values())), desc="profile", unit="pt", disable=not progress, leave=False)
    try:
        for stage, specs in todo.items():
            _plan, measure, role = STAGE_FUNCS[stage]
            now = time.perf_counter()
            stage_end = now + max(0.0, t_end - now) * SHARES[stage] / left_shares
            left_shares -= SHARES[stage]
            bench.place(role)
            bar.set_postfix_str(stage)
            if specs:  # untimed: builds the engine, warms caches and allocator at this stage's shapes
                measure(bench, dict(specs[0]))
            done: list[tuple[dict[str, Any], list[float]]] = []
            for i, spec in enumerate(specs):
                if i >= MIN_POINTS[stage] and time.perf_counter() > stage_end:
                    bar.update(len(specs) - i)
                    break
                spec = dict(spec)
                done.append((spec, [measure(bench, spec)]))
                bar.update(1)
            passes = 1
            while passes < MAX_PASSES and done and time.perf_counter() < stage_end:
                passes += 1
                bar.set_postfix_str(f"{stage}, pass {passes}")
                for spec, times in done:
                    if time.perf_counter() > stage_end:
                        break
                    times.append(measure(bench, spec))
            for spec, times in done:
                spec["seconds"], spec["passes"] = float(median(times)), len(times)
                points.append(spec)
    finally:
        bar.close()
        bench.restore()
    return points
