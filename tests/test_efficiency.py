"""The pipeline's bound and a run's efficiency (asyncopd/trace/efficiency.py): closed forms on
hand-built traces, and invariants over random ones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.trace.efficiency import bound_of, breakdown, device_loads, efficiency, union_s, work_from_trace


def span(name: str, worker: str, start: float, dur: float, **args) -> dict:
    return {"name": name, "ph": "X", "ts": start * 1e6, "dur": dur * 1e6, "args": {"worker": worker, **args}}


def test_shared_devices_add_their_workers_work() -> None:
    # rollout alone on device 0; teacher and learner share device 1; a 2-device worker loads both
    place = {"rollout-0": (0,), "teacher-0": (1,), "learner-0": (1,), "big-0": (2, 3)}
    work = {"rollout-0": 0.004, "teacher-0": 0.002, "learner-0": 0.003, "big-0": 0.001}
    assert device_loads(work, place) == {0: 0.004, 1: 0.005, 2: 0.001, 3: 0.001}
    b = bound_of(work, place)
    assert b["samples_per_s"] == pytest.approx(200.0) and b["device"] == 1
    assert b["workers"] == ["learner-0", "teacher-0"]


def test_a_wave_counts_once_and_cpu_time_wins_over_wall_time() -> None:
    wave = [span("generate", "rollout-0", 1.0, 0.05 - 0.001 * i, wave_cpu_s=0.04) for i in range(8)]
    events = [*wave,
              span("score", "teacher-0", 1.06, 0.01, cpu_s=0.006),
              span("score", "teacher-0", 1.07, 0.02),  # no CPU time (a GPU worker): its wall time
              span("train", "learner-0", 1.1, 0.03, cpu_s=0.025),
              span("sync", "rollout-0", 1.2, 0.002, paused_s=0.0005),
              {"name": "thread_name", "ph": "M", "args": {"name": "x"}}]
    work, spans = work_from_trace(events)
    assert work == pytest.approx({"rollout-0": 0.0405, "teacher-0": 0.026, "learner-0": 0.025})
    assert union_s(spans["rollout-0"]) == pytest.approx(0.052)


def test_efficiency_is_the_busiest_devices_work_over_the_wall_time() -> None:
    place = {"rollout-0": (0,), "teacher-0": (1,), "learner-0": (1,)}
    work = {"rollout-0": 6.0, "teacher-0": 2.0, "learner-0": 3.0}
    spans = {"rollout-0": [(0.0, 4.0), (4.5, 8.0)], "teacher-0": [(0.0, 2.5)], "learner-0": [(2.0, 6.0)]}
    e = efficiency(800, 10.0, work, spans, place)
    assert e["samples_per_s"] == pytest.approx(800 / 6.0) and e["device"] == 0
    assert e["efficiency"] == pytest.approx(0.6)  # 80 samples/s of 133.3
    assert e["breakdown"] == pytest.approx({"work": 0.6, "waiting": 0.15, "idle": 0.25})


def test_overlapping_spans_on_a_shared_device_count_once() -> None:
    assert union_s([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert breakdown(10.0, 3.0, [(0, 2), (1, 3)]) == pytest.approx({"work": 0.3, "waiting": 0.0, "idle": 0.7})


def test_no_work_or_no_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="no work"):
        bound_of({}, {"rollout-0": (0,)})
    with pytest.raises(ValueError, match="no samples"):
        efficiency(0, 1.0, {"rollout-0": 1.0}, {}, {"rollout-0": (0,)})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0.001, 1.0), st.floats(0.01, 1.0), st.floats(0.0, 1.0)),
                min_size=1, max_size=30), st.integers(1, 1000))
def test_efficiency_of_a_feasible_run_is_at_most_one_and_its_shares_sum_to_one(calls, samples) -> None:
    """Workers that work only inside their own spans, one call at a time, on one device each:
    the busiest device cannot have worked more than the wall time."""
    place = {f"w-{i}": (i,) for i in range(3)}
    clock = {w: 0.0 for w in place}
    work: dict[str, float] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for i, dur, busy, gap in calls:
        w = f"w-{i}"
        start = clock[w] + gap
        spans.setdefault(w, []).append((start, start + dur))
        work[w] = work.get(w, 0.0) + busy * dur
        clock[w] = start + dur
    wall = max(clock.values())
    e = efficiency(samples, wall, work, spans, place)
    assert 0 < e["efficiency"] <= 1 + 1e-9
    assert sum(e["breakdown"].values()) == pytest.approx(1.0)
    assert e["breakdown"]["work"] == pytest.approx(e["efficiency"])
