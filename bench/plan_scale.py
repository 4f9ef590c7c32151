"""Planner speed: plan an 8-GPU node and a 64-GPU cluster (8 x 8 H100, Qwen3-1.7B student,
Qwen3-30B-A3B teacher, 16K-token responses: configs/h100x8-qwen3.yaml) and print how many
layout x policy candidates were simulated and the wall time. Target (issue 6): >= 500
candidates in < 60 s on 2 cores.

With ``--full-length SECONDS`` it measures instead how many candidates can be simulated at the
planner's full length (``--steps`` learner updates) within that wall-clock budget: candidates
drawn from the whole space (every layout that fits, with every policy; a seeded shuffle, so
that sync and pipelined candidates, small and large layouts come in their proportions) are
simulated by ``--jobs`` processes as the planner runs them, and those finished in time are
counted. The planner's own runs and outputs are not touched.

    python bench/plan_scale.py [--devices 8 64] [--budget 512] [--jobs 2]
    python bench/plan_scale.py --devices 64 --full-length 60
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from asyncopd.planner import PlanOptions, plan_cluster, planner_config
from asyncopd.planner.core import plan_candidates
from asyncopd.planner.search import _init_worker, _run_one
from host_load import reference_loop_s  # (bench/ is on sys.path when run as a script)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "h100x8-qwen3.yaml"


def full_length_count(devices: int, steps: int, seconds: float, jobs: int) -> dict:
    """Simulate shuffled candidates of the whole space at ``steps`` updates in ``jobs``
    processes for ``seconds`` of wall time; count the ones finished within it."""
    cfg = planner_config(CONFIG, devices=devices)
    res, cands, seed = plan_candidates(cfg, PlanOptions(budget_layouts=10**9, jobs=jobs, steps=steps))
    random.Random(0).shuffle(cands)
    todo = iter(cands)
    done = errors = sync = 0
    cpu = 0.0
    with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(cfg.model_dump(mode="json"), seed)) as pool:
        t0 = time.perf_counter()
        running = {}
        for c in todo:  # keep every process busy with one job waiting behind it
            running[pool.submit(_run_one, (c.key, c.layout.section(), c.policy, c.mem.rollout_share, steps))] = c
            if len(running) >= 2 * jobs:
                break
        while running:
            left = seconds - (time.perf_counter() - t0)
            finished, _ = wait(running, timeout=max(0.0, left), return_when=FIRST_COMPLETED)
            if time.perf_counter() - t0 > seconds:
                break
            for f in finished:
                c = running.pop(f)
                _, _, out = f.result()
                done += 1
                errors += bool(out.get("error"))
                sync += c.is_sync
                cpu += out.get("cpu_s", 0.0)
                nxt = next(todo, None)
                if nxt is not None:
                    running[pool.submit(_run_one, (nxt.key, nxt.layout.section(), nxt.policy, nxt.mem.rollout_share,
                                                   steps))] = nxt
        for f in running:
            f.cancel()
    return {"candidates": len(cands), "done": done, "sync": sync, "errors": errors, "cpu_s": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--budget", type=int, default=512, help="--budget-layouts")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="learner steps of the finalists")
    ap.add_argument("--full-length", type=float, default=None, metavar="SECONDS",
                    help="count the candidates simulated at --steps updates within SECONDS of wall time instead")
    args = ap.parse_args()
    if args.full_length is not None:
        print(f"candidates simulated at full length ({args.steps} updates) in {args.full_length:g} s, "
              f"{args.jobs} jobs, {CONFIG.name}")
        print(f"{'GPUs':>5}{'space':>8}{'done':>7}{'sync':>6}{'errors':>8}{'cpu s':>8}{'per cpu-min':>13}"
              f"{'ref loop s':>12}")
        for n in args.devices:
            ref = reference_loop_s()
            r = full_length_count(n, args.steps, args.full_length, args.jobs)
            per_min = 60 * r["done"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
            print(f"{n:>5}{r['candidates']:>8}{r['done']:>7}{r['sync']:>6}{r['errors']:>8}{r['cpu_s']:>8.1f}"
                  f"{per_min:>13.0f}{ref:>12.3f}")
        print("(space: candidates of the whole space (layouts that fit x policies), drawn in a seeded shuffle;\n"
              " done: simulated to the end within the budget, of which sync and errors (refused by the simulator);\n"
              " cpu s: CPU seconds of those simulations; per cpu-min: done per CPU minute, which a busy host\n"
              " (fewer CPU seconds in the budget) does not change; on an idle host cpu s is about jobs x SECONDS)")
        return
    rows = []
    for n in args.devices:
        ref = reference_loop_s()
        cfg = planner_config(CONFIG, devices=n)
        t0 = time.perf_counter()
        res = plan_cluster(cfg, PlanOptions(budget_layouts=args.budget, jobs=args.jobs, steps=args.steps),
                           progress=False)
        wall = time.perf_counter() - t0
        rows.append((n, res, wall, ref))
    print(f"planner on {CONFIG.name}: budget {args.budget} candidates, {args.jobs} jobs, finalists at "
          f"{args.steps} steps")
    print(f"{'GPUs':>5}{'layouts':>9}{'no mem':>8}{'cands':>8}{'pruned':>8}{'simulated':>11}{'sims':>7}"
          f"{'wall s':>8}{'cpu s':>8}{'cand/s':>8}{'ref loop s':>12}  rounds (candidates x steps: wall s)")
    for n, res, wall, ref in rows:
        c = res.counts
        rounds = ", ".join(f"{k} x {s}: {t:.1f}" for s, k, t in res.rounds)
        print(f"{n:>5}{c['layouts']:>9}{c['rejected_memory']:>8}{c['candidates']:>8}{c['pruned_by_bound']:>8}"
              f"{c['simulated']:>11}{c.get('simulations', 0):>7}{wall:>8.1f}{c.get('sim_cpu_s', 0):>8.1f}"
              f"{c['simulated'] / wall:>8.1f}"
              f"{ref:>12.3f}  {rounds}")
    for n, res, wall, ref in rows:
        b, s = res.best, res.best_sync
        if b is None:
            print(f"{n} GPUs: no plan met the constraints")
            continue
        sp = res.speedup(b)
        print(f"{n} GPUs: chosen {b.layout.describe()} {b.policy}: {b.throughput:,.0f} tokens/s"
              + (f", {sp:.2f}x the best sync ({s.layout.describe()}, {s.throughput:,.0f} tokens/s)" if sp else "")
              + f", staleness mean {(b.result or {}).get('staleness_mean', 0):.2f}")
    print("(simulated: distinct candidates simulated; sims: simulations including the longer re-runs of the\n"
          " successive-halving rounds; cpu s: CPU seconds of all simulations, whichever process ran them --\n"
          " on an otherwise idle host wall s is about cpu s / jobs. ref loop s: a fixed Python loop timed\n"
          " before each plan, about 0.42 s on a quiet host; when it is higher the host was busy)")


if __name__ == "__main__":
    main()
