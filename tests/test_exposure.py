"""A local run's processes listen on loopback only, and a run that fails exits non-zero.

``asyncopd train`` runs as a subprocess; while it runs, the test collects the listening TCP
sockets of it and every process it started (Ray's GCS, raylet, agents and workers: all its
descendants), through psutil.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def listening(root: psutil.Process) -> dict[str, set[str]]:
    """``{process name: {listening address, ...}}`` of ``root`` and its descendants."""
    out: dict[str, set[str]] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                out.setdefault(name, set()).add(c.laddr.ip)
    return out


def test_a_local_run_listens_on_loopback_only_and_exits_1_when_it_fails(tmp_path) -> None:
    """The run's only teacher is killed for good (no restarts) after a few updates: the run
    ends ``ok: false`` and the command says why on one line and exits 1 (not 0)."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "asyncopd", "train", "configs/default.yaml", "--out", str(run), "--no-progress",
           "--no-plots", *[a for o in ("run.total_steps=400", "learner.batch_size=8", "learner.micro_batch_size=8",
                                       "run.worker_restarts=0") for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, set[str]] = {}
    killed = False
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                for name, addrs in listening(root).items():
                    seen.setdefault(name, set()).update(addrs)
            except psutil.NoSuchProcess:
                break
            if not killed and (run / "log.jsonl").is_file() and len((run / "log.jsonl").read_text().splitlines()) >= 3:
                os.kill(json.loads((run / "run.json").read_text())["placement"]["teacher-0"]["pid"], signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    names = " ".join(seen)
    assert "gcs_server" in names and "raylet" in names, seen  # (Ray's own servers were seen)
    assert any(n.startswith("ray::") for n in seen), seen  # (and its workers)
    exposed = {name: sorted(a for a in addrs if a not in LOOPBACK) for name, addrs in seen.items()}
    assert not any(exposed.values()), f"listening beyond loopback: {exposed}"
    assert killed and proc.returncode == 1, (proc.returncode, err[-2000:])
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("failed:") and "all teacher workers failed" in last and "teacher-0" in last, err[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert not summary["ok"] and summary["faults"]["still_down"] == ["teacher-0"]
    assert summary["counters"]["failed_teacher"] == 1 and "restarted_teacher" not in summary["counters"]
