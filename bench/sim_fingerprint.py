"""Fingerprints of the simulator's and the planner's outputs, to prove a refactor changed nothing.

Each case simulates a config into a run directory and hashes every file the simulator writes
(``samples.jsonl``, ``log.jsonl``, ``queues.csv``, ``trace.json``, ``summary.json`` without its
wall-clock field ``sim_wall_s``); the planner cases hash the ranked table (``plan.csv``) and
``plan.yaml``. Floats are hashed as written (``repr``), so "identical" means bit-identical.

    python bench/sim_fingerprint.py --write bench/sim_fingerprints.json   # record (before a change)
    python bench/sim_fingerprint.py --check bench/sim_fingerprints.json   # compare (after it); exit 1 on a change
    python bench/sim_fingerprint.py --check ... --only default-sync       # one case

The cases cover both cost models (parametric; analytic with tensor parallelism), the noise
wrapper (``sim.costs.*_cv``, on both models), the three policy kinds with a per-sample cap and
evictions, abort-on-sync re-queues, and the planner's bound, pruning and ranking.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = str(REPO / "configs" / "default.yaml")
H100 = str(REPO / "configs" / "h100x8-qwen3.yaml")
NOISE = ["sim.costs.decode_cv=0.3", "sim.costs.teacher_cv=0.2", "sim.costs.learner_cv=0.2", "sim.costs.sync_cv=0.5",
         "sim.costs.dispatch_cv=0.4"]

# name -> (config, overrides)
SIM_CASES: dict[str, tuple[str, list[str]]] = {
    "default-sync": (DEFAULT, ["pipeline.policy=sync"]),
    "default-step_off2": (DEFAULT, ["pipeline.policy=step_off(2)"]),
    "default-fully_async-cap-evict": (DEFAULT, ["pipeline.policy=fully_async(eta=2, max_staleness=1, on_exceed=evict)"]),
    "default-as-shipped": (DEFAULT, []),
    "default-noise-abort-keepcap": (DEFAULT, ["run.total_steps=300", "pipeline.pause_mode=abort",
                                              "pipeline.policy=fully_async(eta=1, max_staleness=0, on_exceed=keep)",
                                              *NOISE]),
    "h100x8-qwen3": (H100, []),
    "h100x8-qwen3-noise-step_off1": (H100, ["pipeline.policy=step_off(1)", *NOISE]),
}
# name -> (config, plan options)
PLAN_CASES: dict[str, tuple[str, dict]] = {
    "plan-default": (DEFAULT, {}),
    "plan-h100x8": (H100, {"budget_layouts": 64, "steps": 4, "finalists": 4}),
}
SIM_FILES = ("samples.jsonl", "log.jsonl", "queues.csv", "trace.json", "summary.json")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def sim_case(config: str, overrides: list[str]) -> dict[str, str]:
    from asyncopd.config import load_config
    from sim.driver import simulate

    cfg = load_config(config, overrides)
    with tempfile.TemporaryDirectory() as d:
        simulate(cfg, d, progress=False)
        out = {}
        for name in SIM_FILES:
            p = Path(d) / name
            if name == "summary.json":
                summary = json.loads(p.read_text())
                summary.pop("sim_wall_s", None)
                out[name] = _digest(json.dumps(summary, sort_keys=True).encode())
            else:
                out[name] = _digest(p.read_bytes())
        return out


def plan_case(config: str, options: dict) -> dict[str, str]:
    from asyncopd.planner.core import PlanOptions, plan_cluster, planner_config
    from asyncopd.planner.write import save_plan

    cfg = planner_config(Path(config), [], devices=None, hardware=None, costs=None)
    res = plan_cluster(cfg, PlanOptions(**options), progress=False)
    with tempfile.TemporaryDirectory() as d:
        paths = save_plan(res, Path(d), plots=False)
        out = {"plan.csv": _digest(Path(paths["csv"]).read_bytes())}
        plan_yaml = [line for line in Path(paths["config"]).read_text().splitlines() if not line.startswith("#")]
        out["plan.yaml"] = _digest("\n".join(plan_yaml).encode())
        return out


def fingerprints(only: list[str] | None) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, (config, overrides) in SIM_CASES.items():
        if not only or name in only:
            t0 = time.perf_counter()
            out[name] = sim_case(config, overrides)
            print(f"{name:<34} {time.perf_counter() - t0:6.1f} s", flush=True)
    for name, (config, options) in PLAN_CASES.items():
        if not only or name in only:
            t0 = time.perf_counter()
            out[name] = plan_case(config, options)
            print(f"{name:<34} {time.perf_counter() - t0:6.1f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="record the fingerprints in this JSON file")
    mode.add_argument("--check", type=Path, help="compare with the fingerprints in this JSON file")
    ap.add_argument("--only", action="append", help="a case name (repeatable)")
    args = ap.parse_args()
    got = fingerprints(args.only)
    if args.write:
        old = json.loads(args.write.read_text()) if args.write.exists() and args.only else {}
        args.write.write_text(json.dumps({**old, **got}, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(got)} cases to {args.write}")
        return 0
    want = json.loads(args.check.read_text())
    changed = 0
    for name, files in got.items():
        for f, h in files.items():
            same = want.get(name, {}).get(f) == h
            changed += not same
            print(f"{'same   ' if same else 'CHANGED'} {name}/{f}")
    print(f"{changed} of {sum(len(v) for v in got.values())} outputs changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
