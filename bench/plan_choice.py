"""Is the planner's first choice the best layout measured on this machine? (issue 6)

    python bench/plan_choice.py --plan DIR [--plan DIR2 ...] [--only 'step_off(2);fully_async(eta=4)']
                                [--steps 200] [--repeats 3] [--out DIR]

Runs the ``plan.yaml`` of every ``--plan`` directory (written by ``asyncopd plan``) and the
fidelity benchmark's combinations on the base config (``calibration.fidelity.COMBOS``, or the
``--only`` subset) with the real trainer, each ``--steps`` updates, ``--repeats`` times, round
robin with the order reversed every other round (a slow spell of the host hits every config
alike). Prints mean consumed tokens/s (the planner's ranking metric) and samples/s per config,
and for each plan its gap to the best measured config. ``results.json`` is rewritten after
every run. Nothing else should run on the machine meanwhile: it drifts by up to 1.8x here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from asyncopd.config import load_config
from asyncopd.planner.verify import bake_off
from asyncopd.trace.schema import write_atomic
from calibration.fidelity import COMBOS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", type=Path, action="append", default=[], help="a plan directory (repeatable)")
    ap.add_argument("--config", default="configs/default.yaml", help="base config of the combinations")
    ap.add_argument("--only", default="step_off(2);fully_async(eta=4)",
                    help="semicolon-separated combinations of calibration.fidelity.COMBOS ('' for none)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs") / f"plan-choice-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()
    configs: dict[str, object] = {}
    for p in args.plan:
        if not (p / "plan.yaml").is_file():
            raise SystemExit(f"--plan {p}: no plan.yaml (run `asyncopd plan ... --out {p}` first)")
        configs[f"plan {p.name}"] = load_config(p / "plan.yaml", [f"run.total_steps={args.steps}"])
    for name in [c.strip() for c in args.only.split(";") if c.strip()]:
        if name not in COMBOS:
            raise SystemExit(f"--only: unknown combination {name!r}; known: {list(COMBOS)}")
        configs[name] = load_config(args.config, [*COMBOS[name], f"run.total_steps={args.steps}"])
    if not configs:
        raise SystemExit("nothing to run: give --plan and/or --only")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {n: [] for n in configs}

    def record(name: str, run: dict) -> None:
        runs[name].append(run)
        write_atomic(args.out / "results.json", json.dumps(runs, indent=2))

    bake_off(configs, args.out, repeats=args.repeats, on_run=record)
    mean = {n: float(np.mean([r["tokens_per_s"] for r in rs])) for n, rs in runs.items()}
    best = max(mean, key=mean.get)
    t = Table(title=f"{args.steps} updates x {args.repeats} runs each, round robin", title_justify="left")
    for col in ("config", "layout / policy", "tokens/s (runs)", "samples/s", "staleness", "vs best"):
        t.add_column(col)
    for n in sorted(mean, key=lambda n: -mean[n]):
        cfg = configs[n]
        lay = cfg.layout
        desc = (f"R{lay.rollout.workers}@{lay.rollout.devices} T{lay.teacher.workers}@{lay.teacher.devices} "
                f"L@{lay.learner.devices}, {cfg.pipeline.policy}")
        each = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in runs[n])
        t.add_row(n, desc, f"{mean[n]:,.0f} ({each})",
                  f"{np.mean([r['samples_per_s'] for r in runs[n]]):.1f}",
                  f"{np.mean([r['staleness_mean'] for r in runs[n]]):.2f}", f"{mean[n] / mean[best] - 1:+.1%}")
    Console(width=None if sys.stdout.isatty() else 160).print(t)
    for p in args.plan:
        n = f"plan {p.name}"
        print(f"{n}: {mean[n]:,.0f} tokens/s, {mean[n] / mean[best] - 1:+.1%} against the best measured ({best})")


if __name__ == "__main__":
    main()
