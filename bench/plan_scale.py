"""Planner speed: plan an 8-GPU node and a 64-GPU cluster (8 x 8 H100, Qwen3-1.7B student,
Qwen3-30B-A3B teacher, 16K-token responses: configs/h100x8-qwen3.yaml) and print how many
layout x policy candidates were simulated and the wall time. Target (issue 6): >= 500
candidates in < 60 s on 2 cores.

    python bench/plan_scale.py [--devices 8 64] [--budget 512] [--jobs 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from asyncopd.planner import PlanOptions, plan_cluster, planner_config
from host_load import reference_loop_s  # (bench/ is on sys.path when run as a script)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "h100x8-qwen3.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--budget", type=int, default=512, help="--budget-layouts")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12, help="learner steps of the finalists")
    args = ap.parse_args()
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
