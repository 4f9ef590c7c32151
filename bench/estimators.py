"""OPD estimators under staleness: held-out accuracy after a fixed wall-clock budget.

For the built-in task, trains the built-in student with each estimator under ``sync`` and
``fully_async(eta=4)`` for the same wall-clock budget (the real Ray trainer, default
layout) and prints the held-out greedy accuracy reached, the learner steps done and the
measured staleness. The first look at the paper's questions: which estimators survive stale
samples, and which are worth their cost.

    python bench/estimators.py [--budget 60] [--estimators forward_kl_topk,sampled_reverse_kl_online]

Every run uses the same seed and config apart from the estimator and the policy. Accuracy is
exact match on the task's held-out split; the starting student is the same in every run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from asyncopd.config import load_config

ESTIMATORS: dict[str, list[str]] = {
    "forward_kl_topk": ["algorithm.loss=forward_kl_topk"],
    "reverse_kl_topk": ["algorithm.loss=reverse_kl_topk"],  # with the tail bucket (the default)
    "reverse_kl_topk_truncated": ["algorithm.loss=reverse_kl_topk", "algorithm.topk_tail=drop"],
    "sampled_reverse_kl_offline": ["algorithm.loss=sampled_reverse_kl", "algorithm.advantage=offline"],
    "sampled_reverse_kl_online": ["algorithm.loss=sampled_reverse_kl", "algorithm.advantage=online"],
    "mc_reverse_kl": ["algorithm.loss=mc_reverse_kl", "algorithm.num_samples=4"],
}
POLICIES = ("sync", "fully_async(eta=4)")


def run_one(config: str, overrides: list[str], budget_s: float, out: Path) -> dict:
    from asyncopd.runtime.driver import train

    cfg = load_config(config, [*overrides, "run.total_steps=100000", f"run.time_budget_s={budget_s}"])
    t0 = time.perf_counter()
    s = train(cfg, out, progress=False, evaluate=True)
    return {"accuracy": s.get("accuracy"), "accuracy_start": s.get("accuracy_start"), "steps": s.get("steps"),
            "staleness_mean": (s.get("staleness") or {}).get("mean"), "wall_s": time.perf_counter() - t0,
            "samples_per_s": s.get("samples_per_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated, from: " + ", ".join(ESTIMATORS))
    ap.add_argument("--policies", default=";".join(POLICIES), help="semicolon-separated pipeline policies")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    names = [e for e in args.estimators.split(",") if e]
    unknown = [e for e in names if e not in ESTIMATORS]
    if unknown:
        ap.error(f"unknown estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    policies = [p for p in args.policies.split(";") if p]
    console = Console()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for policy in policies:
                console.print(f"[bold]{name}[/] under [bold]{policy}[/] for {args.budget:.0f} s ...")
                out = Path(tmp) / f"{name}-{policy}".replace("(", "_").replace(")", "").replace("=", "")
                r = run_one(args.config, [*ESTIMATORS[name], f"pipeline.policy={policy}", *args.overrides],
                            args.budget, out)
                results.setdefault(name, {})[policy] = r
                console.print(f"  accuracy {r['accuracy_start']:.1%} -> {r['accuracy']:.1%} after {r['steps']} steps")
    table = Table(title=f"held-out accuracy after {args.budget:.0f} s of training (built-in task, 2-core CPU)")
    table.add_column("estimator")
    for p in policies:
        table.add_column(p, justify="right")
    for name in names:
        cells = []
        for p in policies:
            r = results[name][p]
            cells.append(f"{r['accuracy']:.1%}  ({r['steps']} steps, stale {r['staleness_mean'] or 0:.2f})")
        table.add_row(name, *cells)
    console.print(table)
    start = next(iter(next(iter(results.values())).values()))["accuracy_start"]
    console.print(f"starting student: {start:.1%}; the same seed, data order and budget for every run")
    if args.json:
        args.json.write_text(json.dumps({"budget_s": args.budget, "results": results}, indent=2))


if __name__ == "__main__":
    main()
