"""The run-directory format: recorder output validates; damage is reported with file, line and field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.config import load_config
from asyncopd.trace.schema import RunFormatError, read_trace, validate_run_dir
from asyncopd.trace.stats import QueueTracker
from sim.driver import simulate

CFG = ["sim.response_length.kind=lognormal", "sim.prompt_tokens_mean=10", "run.total_steps=6"]


@pytest.fixture()
def run_dir(tmp_path):
    simulate(load_config(None, CFG), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_simulated_run_validates_and_trace_names_tracks(run_dir) -> None:
    counts = validate_run_dir(run_dir)
    assert counts["steps"] == 6 and counts["samples"] >= 6 * 16
    events = read_trace(run_dir / "trace.json")
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"rollout-0 slot 0", "teacher-0", "learner-0"} <= names
    assert {e["name"] for e in events if e["ph"] == "X"} >= {"generate", "score", "train", "sync"}


def test_truncated_trace_still_loads(run_dir) -> None:
    text = (run_dir / "trace.json").read_text()
    cut = text[: text.rindex("},") + 2]  # as if the process died mid-run
    (run_dir / "trace.json").write_text(cut)
    assert len(read_trace(run_dir / "trace.json")) > 10
    validate_run_dir(run_dir)


def test_damage_names_file_line_and_field(run_dir) -> None:
    lines = (run_dir / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["staleness_max"] = -1
    lines[2] = json.dumps(rec)
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFormatError, match=r"samples.jsonl:3: staleness_max"):
        validate_run_dir(run_dir)


def test_missing_file(run_dir) -> None:
    (run_dir / "log.jsonl").unlink()
    with pytest.raises(RunFormatError, match="missing log.jsonl"):
        validate_run_dir(run_dir)


def test_step_time_is_wall_clock_between_steps(run_dir) -> None:
    steps = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    prev = 0.0
    for s in steps:
        assert s["step_time_s"] == pytest.approx(s["t_end"] - prev)
        assert s["step_time_s"] >= s["train_time_s"] - 1e-9
        prev = s["t_end"]


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0, 5), st.integers(0, 4), st.integers(0, 3)), max_size=200),
       chunk=st.integers(1, 50), tail=st.floats(0, 5))
def test_queue_tracker_time_averages_match_a_direct_integral(steps, chunk, tail) -> None:
    """Buffered, chunked folding gives the same integral as summing depth x holding time."""
    q = QueueTracker(("a", "b"), max_points=16, chunk=chunk)
    t, held, area = 0.0, (0, 0), [0.0, 0.0]
    for dt, a, b in steps:
        area = [acc + v * dt for acc, v in zip(area, held)]
        t += dt
        held = (a, b)
        q.observe(t, held)
    t_end = t + tail
    area = [acc + v * tail for acc, v in zip(area, held)]
    got = q.time_averages(t_end)
    if t_end > 0:
        assert got["a"] == pytest.approx(area[0] / t_end, abs=1e-9)
        assert got["b"] == pytest.approx(area[1] / t_end, abs=1e-9)
    assert len(q.timeline) <= 16 + 1
