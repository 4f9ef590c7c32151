"""Chaos: a default-task training run while its workers, and once the driver itself, are killed.

``asyncopd train`` runs as a subprocess. Every ``--kill-every`` seconds a random rollout or
teacher worker process of the run (a descendant named ``ray::RolloutWorker`` or
``ray::TeacherWorker``) gets SIGKILL; Ray restarts it and the run carries on
(``asyncopd/runtime/worker_faults.py``). Once, when ``--driver-kill-at`` of the updates are
done and a checkpoint exists, the ``asyncopd train`` process itself gets SIGKILL; the bench
checks that none of its Ray processes outlive it and continues with ``asyncopd train --resume``.

Printed (and with ``--json``, written):
- updates completed of the total; kills survived (worker restarts seen in ``faults.jsonl``);
- samples lost (a prompt admitted, i.e. below the highest prompt id seen, that was neither
  consumed, evicted nor listed as skipped by the resume: must be 0) and duplicated (a prompt
  consumed twice: must be 0); prompts skipped at the resume (in flight at the checkpoint,
  never trained by design: docs/trace-format.md);
- seconds to recover from each kill (death noticed → fresh process up and rejoined);
- throughput: consumed samples per wall second, against a run of the same config without
  kills (``--baseline``, run first; one pair, not interleaved: it prices the kills, which cost
  seconds each, not a few percent).

    python bench/chaos.py [--steps 300] [--kill-every 10] [--max-kills N] [--driver-kill-at 0.5]
                          [--seed 0] [--set KEY=VALUE ...] [--no-baseline] [--json OUT]

Exit status 1 when a sample is lost or duplicated or the run did not complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER_PROCESSES = ("ray::RolloutWorker", "ray::TeacherWorker")


def train_cmd(config: str, run: Path, sets: list[str], resume: bool = False) -> list[str]:
    base = [sys.executable, "-m", "asyncopd", "train", "--no-progress", "--no-plots", "--no-eval"]
    if resume:
        return [*base, "--resume", str(run)]
    return [*base, config, "--out", str(run), *[a for s in sets for a in ("--set", s)]]


def steps_done(run: Path) -> int:
    try:
        return sum(1 for line in (run / "log.jsonl").read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def worker_processes(root: psutil.Process) -> list[psutil.Process]:
    """The run's rollout and teacher worker processes that are up (not still in ``__init__``,
    i.e. loading their model after a start or restart)."""
    out = []
    for p in root.children(recursive=True):
        try:
            name = p.name()
            if name.startswith(WORKER_PROCESSES) and "__init__" not in name:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def has_checkpoint(run: Path) -> bool:
    return any((run / "checkpoints").glob("step_*/resume.json"))


def resume_skips(run: Path) -> list[int]:
    """The prompts the newest checkpoint a resume starts from skips (in flight when it was saved)."""
    from asyncopd.runtime.checkpoints import list_checkpoints

    logged = steps_done(run)
    found = [c for c in list_checkpoints(run) if c.version <= logged]
    return list(found[-1].info.get("skipped_prompts", [])) if found else []


def run_chaos(config: str, run: Path, sets: list[str], total: int, kill_every: float, driver_kill_at: float | None,
              rng: random.Random, orphan_wait: float = 120.0, max_kills: int | None = None, log=print) -> dict:
    """Train with kills; returns what happened (kills, driver kill, wall time, exit status)."""
    t0 = time.time()
    proc = subprocess.Popen(train_cmd(config, run, sets), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kills: list[dict] = []
    driver: dict | None = None
    orphans: list[psutil.Process] = []
    next_kill = float("inf")  # (the first kill: kill_every after the first update)
    while True:
        if proc.poll() is not None:
            break
        now, done = time.time(), steps_done(run)
        if driver is not None and "ray_gone_after_s" not in driver and not running(orphans):
            driver["ray_gone_after_s"] = round(now - t0 - driver["t"], 1)
        if next_kill == float("inf") and done > (driver or {}).get("at_step", 0):
            next_kill = now + kill_every
        if driver is None and driver_kill_at is not None and done >= driver_kill_at * total and has_checkpoint(run):
            orphans = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            driver = {"at_step": done, "t": round(now - t0, 2), "ray_processes": len(orphans),
                      "skipped_prompts": resume_skips(run)}
            log(f"  killed the driver at update {done} (its Ray: {len(orphans)} processes); resuming")
            proc = subprocess.Popen(train_cmd(config, run, sets, resume=True), cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
            next_kill = float("inf")  # (again once the resumed run has made an update)
            continue
        if now >= next_kill and (max_kills is None or len(kills) < max_kills):
            try:
                victims = worker_processes(psutil.Process(proc.pid))
            except psutil.NoSuchProcess:
                victims = []
            if victims:
                v = rng.choice(victims)
                try:
                    name = v.name()
                    v.kill()
                    kills.append({"process": name, "pid": v.pid, "t": round(now - t0, 2), "at_step": done})
                    log(f"  killed {name} (pid {v.pid}) at update {done}")
                except psutil.NoSuchProcess:
                    pass
            next_kill = now + kill_every
        time.sleep(0.1)
    wall = time.time() - t0  # (the run's; the wait for the killed driver's processes below is not)
    if driver is not None:  # (what of the killed driver's Ray outlived the whole chaos run)
        psutil.wait_procs(running(orphans), timeout=orphan_wait)
        left = running(orphans)
        driver["ray_processes_left"] = [p.name() for p in left]
        if not left and "ray_gone_after_s" not in driver:
            driver["ray_gone_after_s"] = round(time.time() - t0 - driver["t"], 1)
        for p in left:
            p.kill()
    stderr = proc.stderr.read() if proc.stderr else ""
    return {"kills": kills, "driver_kill": driver, "wall_s": wall, "returncode": proc.returncode,
            "stderr_tail": stderr.strip().splitlines()[-3:]}


def account(run: Path, skipped: frozenset[int] | set[int] = frozenset()) -> dict:
    """Every prompt accounted for: consumed once, evicted, or ``skipped`` at a resume."""
    from asyncopd.trace.schema import read_jsonl

    recs = read_jsonl(run / "samples.jsonl")
    consumed = [r["prompt_id"] for r in recs if r["status"] == "consumed"]
    settled = {r["prompt_id"] for r in recs if r["status"] in ("consumed", "evicted", "unfinished")}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    highest = max((r["prompt_id"] for r in recs), default=-1)
    lost = sorted(set(range(highest + 1)) - settled - skipped)
    faults = [json.loads(line) for line in (run / "faults.jsonl").read_text().splitlines()] \
        if (run / "faults.jsonl").is_file() else []
    return {"consumed": len(consumed), "duplicated": len(consumed) - len(set(consumed)), "lost": len(lost),
            "lost_prompts": lost[:20], "skipped_at_resume": len(skipped - set(consumed)),
            "recoveries_s": [f["recovery_s"] for f in faults if f["event"] == "back"],
            "deaths": sum(1 for f in faults if f["event"] == "died"),
            "redone_generations": summary.get("counters", {}).get("redone_generations", 0),
            "redone_scoring": summary.get("counters", {}).get("redone_scoring", 0),
            "ok": summary.get("ok"), "steps": steps_done(run)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--kill-every", type=float, default=10.0, help="seconds between worker kills")
    ap.add_argument("--driver-kill-at", type=float, default=0.5, help="fraction of the updates (negative: never)")
    ap.add_argument("--checkpoint-every", type=int, default=None, help="default: a sixth of --steps")
    ap.add_argument("--max-kills", type=int, default=None, help="stop killing workers after this many")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--orphan-wait", type=float, default=120.0, help="seconds to wait at the end for the killed "
                    "driver's Ray processes to exit (its agents outlive it by up to ~60 s: they fate-share with the "
                    "dead raylet only after their GCS client gives up)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args(argv)

    every = args.checkpoint_every or max(1, args.steps // 6)
    sets = [f"run.total_steps={args.steps}", f"run.checkpoint_every={every}", "run.worker_restarts=1000", *args.sets]
    root = args.out or Path(tempfile.mkdtemp(prefix="chaos-"))
    base = None
    if args.baseline:
        print(f"baseline: {args.steps} updates without kills ...", flush=True)
        t = time.time()
        b = subprocess.run(train_cmd(args.config, root / "baseline", sets), cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t
        if b.returncode != 0:
            print(f"the baseline run failed: {b.stderr.strip().splitlines()[-1:]}")
            return 1
        base = {"wall_s": wall, "samples_per_wall_s": account(root / "baseline")["consumed"] / wall}
    print(f"chaos: {args.steps} updates, a worker killed every {args.kill_every:g} s"
          + (f", the driver at {args.driver_kill_at:.0%}" if args.driver_kill_at >= 0 else ""), flush=True)
    chaos = run_chaos(args.config, root / "chaos", sets, args.steps, args.kill_every,
                      args.driver_kill_at if args.driver_kill_at >= 0 else None, random.Random(args.seed),
                      orphan_wait=args.orphan_wait, max_kills=args.max_kills)
    acc = account(root / "chaos", set(chaos["driver_kill"]["skipped_prompts"]) if chaos["driver_kill"] else set())
    rate = acc["consumed"] / chaos["wall_s"]
    rec = acc["recoveries_s"]
    rows = [
        ("updates completed", f"{acc['steps']} of {args.steps} (exit status {chaos['returncode']}"
                              + (f": {chaos['stderr_tail'][-1]}" if chaos["returncode"] and chaos["stderr_tail"] else "")
                              + ")"),
        ("workers killed / restarts seen", f"{len(chaos['kills'])} / {len(rec)} (deaths noticed {acc['deaths']})"),
        ("driver killed, resumed", "no" if chaos["driver_kill"] is None else
         f"at update {chaos['driver_kill']['at_step']}; its {chaos['driver_kill']['ray_processes']} Ray processes "
         f"gone after {chaos['driver_kill'].get('ray_gone_after_s', '-')} s; left at the end: "
         f"{chaos['driver_kill']['ray_processes_left'] or 'none'}"),
        ("samples lost (must be 0)", str(acc["lost"])),
        ("samples duplicated (must be 0)", str(acc["duplicated"])),
        ("prompts skipped at the resume", f"{acc['skipped_at_resume']} (in flight at the checkpoint; by design)"),
        ("generations / scorings redone", f"{acc['redone_generations']} / {acc['redone_scoring']} (last segment)"),
        ("recovery s per kill", ", ".join(f"{r:.1f}" for r in rec) or "-"),
        ("recovery s mean / max", f"{sum(rec) / len(rec):.1f} / {max(rec):.1f}" if rec else "-"),
        ("throughput (samples / wall s)", f"{rate:.1f}" + (f" vs {base['samples_per_wall_s']:.1f} without kills "
                                                           f"({rate / base['samples_per_wall_s'] - 1:+.1%})" if base else "")),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    result = {"args": vars(args) | {"json": None, "out": str(root)}, "chaos": chaos, "account": acc, "baseline": base,
              "throughput_samples_per_wall_s": rate}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    failed = acc["lost"] or acc["duplicated"] or chaos["returncode"] != 0 or acc["steps"] != args.steps
    left = chaos["driver_kill"]["ray_processes_left"] if chaos["driver_kill"] else []
    if args.orphan_wait <= 0:  # (not waited for: only the agents may still be exiting)
        left = [name for name in left if not name.endswith("Agent")]
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main())
