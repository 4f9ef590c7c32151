"""Workers killed with SIGKILL mid-run come back (Ray restarts them), and the run completes with
every prompt accounted for exactly once (``asyncopd/runtime/worker_faults.py``).

The kills come from a thread that watches the run's ``log.jsonl`` and kills a worker's process
(its pid from ``run.json``) once the run has done a given number of updates.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from asyncopd.config import load_config
from asyncopd.trace.schema import read_jsonl, validate_run_dir

pytestmark = pytest.mark.slow

SMALL = ["learner.batch_size=8", "learner.micro_batch_size=8", "rollout.max_num_seqs=4",
         "teacher.max_batch_samples=8", "pipeline.policy=fully_async(eta=2)"]


def steps_done(run_dir: Path) -> int:
    try:
        return sum(1 for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def pid_of(run_dir: Path, worker: str) -> int:
    return json.loads((run_dir / "run.json").read_text())["placement"][worker]["pid"]


class Killer(threading.Thread):
    """Kill each ``(after_steps, worker)``'s process once the run has done that many updates."""

    def __init__(self, run_dir: Path, plan: list[tuple[int, str]]) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.plan, self.killed = run_dir, sorted(plan), []
        self.stop = threading.Event()

    def run(self) -> None:
        plan = list(self.plan)
        while plan and not self.stop.is_set():
            after, worker = plan[0]
            if steps_done(self.run_dir) >= after:
                pid = pid_of(self.run_dir, worker)
                os.kill(pid, signal.SIGKILL)
                self.killed.append((worker, pid))
                plan.pop(0)
            time.sleep(0.05)


def train_with_kills(tmp_path: Path, overrides: list[str], plan: list[tuple[int, str]]) -> tuple[dict, Path, Killer]:
    from asyncopd.runtime.driver import train

    cfg = load_config("configs/default.yaml", [*SMALL, *overrides])
    run_dir = tmp_path / "run"
    killer = Killer(run_dir, plan)
    killer.start()
    try:
        summary = train(cfg, run_dir, progress=False, evaluate=False)
    finally:
        killer.stop.set()
    return summary, run_dir, killer


def assert_every_prompt_once(run_dir: Path, steps: int, batch: int) -> list[dict]:
    recs = read_jsonl(run_dir / "samples.jsonl")
    consumed = [r["prompt_id"] for r in recs if r["status"] == "consumed"]
    assert len(consumed) == steps * batch
    assert len(set(consumed)) == len(consumed), "a prompt was consumed twice"
    by_prompt: dict[int, list[dict]] = {}
    for r in sorted(recs, key=lambda r: r["sample_id"]):
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for prompt, attempts in by_prompt.items():  # every attempt but the last was aborted and retried
        assert all(a["status"] == "aborted" for a in attempts[:-1]), (prompt, attempts)
        assert attempts[-1]["status"] in ("consumed", "unfinished", "evicted"), (prompt, attempts)
    validate_run_dir(run_dir)
    return recs


def test_killed_rollout_and_teacher_workers_come_back_and_nothing_is_lost(ray_session, tmp_path) -> None:
    steps = 120  # (long enough for the restarts, 1-7 s here, to finish before the run does)
    summary, run_dir, killer = train_with_kills(
        tmp_path, [f"run.total_steps={steps}", "layout.rollout.workers=2", "layout.teacher.workers=2"],
        [(1, "rollout-1"), (2, "teacher-0")])
    assert [w for w, _ in killer.killed] == ["rollout-1", "teacher-0"]
    assert summary["ok"], summary["reason"]
    assert summary["steps"] == steps
    c = summary["counters"]
    assert c["failed_rollout"] == 1 and c["restarted_rollout"] == 1
    assert c["failed_teacher"] == 1 and c["restarted_teacher"] == 1
    faults = summary["faults"]
    assert sorted(r["worker"] for r in faults["restarts"]) == ["rollout-1", "teacher-0"]
    assert all(r["recovery_s"] > 0 for r in faults["restarts"]) and faults["still_down"] == []
    recs = assert_every_prompt_once(run_dir, steps, 8)
    redone = [r for r in recs if r.get("end_reason") == "worker_failed"]
    assert len(redone) == c.get("redone_generations", 0)  # (absent when the kill found no wave in flight)
    # the restarted worker generated again, after it was synced (its samples start at a version > 0)
    late = [r for r in recs if r["worker"] == "rollout-1" and r["status"] == "consumed"
            and r["sample_id"] > max((x["sample_id"] for x in redone), default=-1)]
    assert late and min(r["version_spans"][0][0] for r in late) > 0


def test_the_only_rollout_worker_killed_the_run_completes_after_its_restart(ray_session, tmp_path) -> None:
    steps = 10
    summary, run_dir, killer = train_with_kills(tmp_path, [f"run.total_steps={steps}"], [(3, "rollout-0")])
    assert killer.killed and summary["ok"], summary["reason"]
    assert summary["steps"] == steps and summary["counters"]["restarted_rollout"] == 1
    assert_every_prompt_once(run_dir, steps, 8)


def test_a_dead_learner_stops_the_run_at_once_and_resume_finishes_it(ray_session, tmp_path) -> None:
    from asyncopd.runtime.driver import train

    steps = 30
    summary, run_dir, killer = train_with_kills(tmp_path, [f"run.total_steps={steps}", "run.checkpoint_every=5"],
                                                [(12, "learner-0")])
    assert killer.killed and not summary["ok"]
    assert "learner-0 failed" in summary["reason"] and "--resume" in summary["reason"], summary["reason"]
    assert summary["faults"]["learner_lost"]
    assert summary["steps"] < steps
    resumed = train(None, run_dir, progress=False, evaluate=False, resume=True)
    assert resumed["ok"], resumed["reason"]
    consumed = [r["prompt_id"] for r in read_jsonl(run_dir / "samples.jsonl") if r["status"] == "consumed"]
    assert len(consumed) == len(set(consumed)), "a prompt was trained twice across the resume"
    validate_run_dir(run_dir)
