"""Closed-form checks of the simulator: cases where the answer can be derived by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asyncopd.config import load_config
from asyncopd.trace.schema import read_jsonl
from sim.cost_model import segment_steps_within, segment_time
from sim.driver import simulate

DET = ["sim.response_length.kind=fixed", "sim.response_length.max=20", "sim.prompt_tokens_mean=10",
       "sim.costs.model_bytes=0", "sim.costs.sync_fixed_s=0", "sim.costs.prefill_per_token_s=0",
       "sim.costs.dispatch_s=0",
       "learner.batch_size=4", "learner.micro_batch_size=4", "rollout.max_num_seqs=4", "teacher.max_batch_samples=4"]


def costs(**kw: float) -> list[str]:
    return [f"sim.costs.{k}={v}" for k, v in kw.items()]


def steady_rate(run_dir, skip: int) -> float:
    """Samples per second between the end of step ``skip`` and the last step."""
    steps = read_jsonl(run_dir / "log.jsonl")
    a, b = steps[skip], steps[-1]
    return (b["step"] - a["step"]) * a["samples"] / (b["t_end"] - a["t_end"])


@pytest.mark.parametrize("bottleneck", ["rollout", "teacher", "learner"])
def test_async_steady_state_throughput_is_the_bottleneck_stage(tmp_path, bottleneck) -> None:
    """Pipelined stages: throughput = B / max(stage time per batch)."""
    fast = {"decode_step_s": 1e-4, "decode_per_seq_s": 0.0, "teacher_fixed_s": 1e-3, "teacher_per_token_s": 0.0,
            "learner_fixed_s": 1e-3, "learner_per_token_s": 0.0}
    slow = {"rollout": {"decode_step_s": 0.01}, "teacher": {"teacher_fixed_s": 0.3},
            "learner": {"learner_fixed_s": 0.3}}[bottleneck]
    c = {**fast, **slow}
    stage = {"rollout": 20 * c["decode_step_s"], "teacher": c["teacher_fixed_s"], "learner": c["learner_fixed_s"]}
    cfg = load_config(None, [*DET, *costs(**c), "pipeline.policy=fully_async(eta=2)", "run.total_steps=40"])
    simulate(cfg, tmp_path, progress=False)
    assert steady_rate(tmp_path, 10) == pytest.approx(4 / max(stage.values()), rel=0.01)


def test_fully_async_staleness_is_eta_when_the_learner_is_the_bottleneck(tmp_path) -> None:
    """Instant rollout, slow learner: the admission window is always full, so a sample admitted
    right after update s is issued waits behind eta*B ready samples and is consumed by update s+eta."""
    eta = 3
    cfg = load_config(None, [*DET, *costs(decode_step_s=1e-5, decode_per_seq_s=0, teacher_fixed_s=1e-5,
                                          teacher_per_token_s=0, learner_fixed_s=1.0, learner_per_token_s=0),
                             f"pipeline.policy=fully_async(eta={eta})", "run.total_steps=20",
                             "rollout.max_num_seqs=64"])
    simulate(cfg, tmp_path, progress=False)
    late = [r for r in read_jsonl(tmp_path / "samples.jsonl") if r["status"] == "consumed" and r["consumed_step"] >= 8]
    assert late and all(r["staleness_max"] == eta and r["staleness_mean"] == eta for r in late)


def test_step_off_one_with_a_slow_rollout_gives_staleness_one_at_start(tmp_path) -> None:
    """Rollout-bound step_off(1) with abort: every batch b >= 1 is (re)started on version b-1 and
    aborted when version b arrives... so with keep, tokens before the sync are 1 stale, after it 0."""
    cfg = load_config(None, [*DET, *costs(decode_step_s=0.01, decode_per_seq_s=0, teacher_fixed_s=1e-3,
                                          teacher_per_token_s=0, learner_fixed_s=1e-3, learner_per_token_s=0),
                             "pipeline.policy=step_off(1)", "pipeline.pause_mode=keep", "run.total_steps=10"])
    simulate(cfg, tmp_path, progress=False)
    recs = [r for r in read_jsonl(tmp_path / "samples.jsonl") if r["status"] == "consumed" and r["batch"] >= 2]
    # Batch b starts when batch b-1 finished generating (rollout-bound), on version b-1; update b-1
    # finishes 2 ms later (teacher + learner), the sync lands after the next decode step: 1 token at
    # version b-1, the other 19 at version b.
    for r in recs:
        assert r["version_spans"] == [[r["batch"] - 1, 1], [r["batch"], 19]]
        assert r["staleness_mean"] == pytest.approx(1 / 20)


@pytest.mark.parametrize("policy", ["sync", "fully_async(eta=2)"])
def test_littles_law_on_the_ready_queue(tmp_path, policy) -> None:
    """Time-average of the ready queue = arrival rate x mean time spent ready."""
    cfg = load_config(None, ["sim.response_length.kind=lognormal", "sim.response_length.cv=1.0",
                             "sim.prompt_tokens_mean=10", f"pipeline.policy={policy}", "run.total_steps=60",
                             "sim.rollout_batching=continuous"])
    s = simulate(cfg, tmp_path, progress=False)  # (with the default dispatch latency)
    recs = [r for r in read_jsonl(tmp_path / "samples.jsonl") if r["status"] == "consumed"]
    waits = [r["consumed_at"] - r["ready_at"] for r in recs]
    lam = len(recs) / s["duration_s"]
    assert s["queues_time_avg"]["ready"] == pytest.approx(lam * sum(waits) / len(waits), rel=1e-6)


def test_continuous_batching_reports_each_completion_at_once(tmp_path) -> None:
    cfg = load_config(None, ["sim.response_length.kind=lognormal", "sim.response_length.cv=1.0",
                             "sim.prompt_tokens_mean=10", "sim.rollout_batching=continuous", "run.total_steps=5"])
    simulate(cfg, tmp_path, progress=False)
    recs = read_jsonl(tmp_path / "samples.jsonl")
    starts = {r["gen_start"] for r in recs}
    assert len(starts) > len(recs) / 4, "requests should join the batch individually, not in waves"


def test_continuous_decode_time_matches_the_segment_formula(tmp_path) -> None:
    """One worker, B sequences of equal length L joining together: each ends after L steps."""
    a, b = 0.002, 0.0005
    cfg = load_config(None, [*DET, *costs(decode_step_s=a, decode_per_seq_s=b), "sim.rollout_batching=continuous",
                             "pipeline.policy=sync", "run.total_steps=1"])
    simulate(cfg, tmp_path, progress=False)
    for r in read_jsonl(tmp_path / "samples.jsonl"):
        assert r["gen_end"] - r["gen_start"] == pytest.approx(20 * (a + 4 * b))


@settings(max_examples=200, deadline=None)
@given(alpha=st.floats(0, 1e-2), beta=st.floats(0, 1e-2), gamma=st.floats(0, 1e-2), delta=st.floats(0, 1e-4),
       k=st.integers(0, 5000))
def test_segment_time_is_the_sum_of_steps_and_inverts(alpha, beta, gamma, delta, k) -> None:
    seg = (alpha + 1e-6, beta, gamma, delta)
    direct = sum(seg[0] + max(beta, gamma + delta * i) for i in range(k))
    assert segment_time(seg, k) == pytest.approx(direct, rel=1e-9, abs=1e-12)
    total = segment_time(seg, k)
    got = segment_steps_within(seg, total * (1 + 1e-12))
    assert got >= k and segment_time(seg, got) <= total * (1 + 1e-12) + 1e-15
    assert math.isclose(segment_time(seg, got), total, rel_tol=1e-9) or got == k


def _finish_times(background: dict[int, float], *, teacher: float, learner: float) -> dict[str, float]:
    """When each of three 1 s jobs ends on ``SharedDevices`` (phi 1, ``background`` load): a
    teacher and a learner on device 1 starting at the given times, a rollout on device 0 at 0."""
    from sim.devices import SharedDevices

    import simpy

    env = simpy.Environment()
    dev = SharedDevices(env, 1.0, background)
    done: dict[str, float] = {}

    def job(name, devices, start):
        yield env.timeout(start)
        yield from dev.run_work(name, devices, 1.0)
        done[name] = env.now

    env.process(job("teacher-0", (1,), teacher))
    env.process(job("learner-0", (1,), learner))
    env.process(job("rollout-0", (0,), 0.0))
    env.run()
    return done


def test_colocated_roles_share_their_device(tmp_path) -> None:
    """Processor sharing: a teacher batch and a learner update running together on one device
    each take twice their own time; on separate devices they do not slow each other."""
    done = _finish_times({}, teacher=0.0, learner=0.5)
    # teacher: 0.5 s alone, then half speed: 0.5 s of work left takes 1 s -> ends at 1.5
    # learner: starts 0.5, half speed until 1.5 (0.5 done), alone for the rest -> ends at 2.0
    assert done == pytest.approx({"teacher-0": 1.5, "learner-0": 2.0, "rollout-0": 1.0})


def test_colocation_slows_the_simulated_run(tmp_path) -> None:
    common = ["sim.response_length.kind=fixed", "sim.response_length.max=20", "sim.prompt_tokens_mean=10",
              "pipeline.policy=fully_async(eta=2)", "run.total_steps=15", "cluster.num_devices=3", "sim.costs.dispatch_s=0",
              *costs(teacher_fixed_s=0.2, learner_fixed_s=0.2, decode_step_s=1e-4, decode_per_seq_s=0)]
    apart = simulate(load_config(None, [*common, "layout.learner.devices=[2]"]), tmp_path / "a", progress=False)
    shared = simulate(load_config(None, [*common, "layout.learner.devices=[1]"]), tmp_path / "b", progress=False)
    assert shared["samples_per_s"] < 0.75 * apart["samples_per_s"]


@settings(max_examples=300, deadline=None)
@given(alpha=st.floats(0, 1e-2), beta=st.floats(0, 1e-2), gamma=st.floats(0, 1e-2), delta=st.floats(0, 1e-4),
       budget=st.floats(0, 50.0))
@example(alpha=0.0, beta=0.0, gamma=1e-28, delta=7.1e-05, budget=3e-176)  # a negative linear term (found by hypothesis)
def test_segment_steps_within_is_the_largest_k_that_fits(alpha, beta, gamma, delta, budget) -> None:
    seg = (alpha + 1e-6, beta, gamma, delta)
    k = segment_steps_within(seg, budget)
    assert segment_time(seg, k) <= budget < segment_time(seg, k + 1)


@pytest.mark.parametrize("budget_in_periods,steps,end_in_periods", [(3.8, 4, 4.0), (3.5, 3, 3.5)])
def test_time_budget_stops_at_the_update_boundary(tmp_path, budget_in_periods, steps, end_in_periods) -> None:
    """sync, deterministic stages: step k is rollout [kT, kT+0.4T], teacher [.., kT+0.6T], learner
    [.., (k+1)T]. A budget that expires while update 3 trains (3.8 T) lets it land (4 steps, end 4 T);
    one that expires before it starts (3.5 T, teacher busy) stops at once (3 steps, end 3.5 T)."""
    c = {"decode_step_s": 0.01, "decode_per_seq_s": 0.0, "teacher_fixed_s": 0.1, "teacher_per_token_s": 0.0,
         "learner_fixed_s": 0.2, "learner_per_token_s": 0.0}
    period = 20 * 0.01 + 0.1 + 0.2
    cfg = load_config(None, [*DET, *costs(**c), "pipeline.policy=sync", "run.total_steps=50",
                             f"run.time_budget_s={budget_in_periods * period}"])
    s = simulate(cfg, tmp_path, progress=False)
    assert s["ok"] and s["steps"] == steps and "time_budget_s" in s["reason"]
    assert s["duration_s"] == pytest.approx(end_in_periods * period)


def test_prediction_intervals_have_their_closed_forms():
    """``sim/intervals.py``: one seed gives the log-normal run factor's own quantiles; more
    seeds add their spread at a Student t quantile; coverage counts hits."""
    import math

    from scipy import stats

    from sim.intervals import coverage, throughput_interval

    iv = throughput_interval([100.0], run_cv=0.1, level=0.9)
    sigma = math.sqrt(math.log1p(0.01))
    assert iv.point == pytest.approx(100.0)
    assert iv.low == pytest.approx(100 * math.exp(-stats.norm.ppf(0.95) * sigma))
    assert iv.high == pytest.approx(100 * math.exp(stats.norm.ppf(0.95) * sigma))
    rates = [90.0, 100.0, 110.0]
    ys = [math.log(r) for r in rates]
    half = math.sqrt(stats.t.ppf(0.95, 2) ** 2 * stats.tvar(ys) * (1 + 1 / 3) + stats.norm.ppf(0.95) ** 2 * sigma ** 2)
    wide = throughput_interval(rates, run_cv=0.1, level=0.9)
    assert wide.high == pytest.approx(math.exp(sum(ys) / 3 + half)) and wide.seeds == 3
    point = throughput_interval([100.0], run_cv=0.0)
    assert point.low == point.high == pytest.approx(100.0)
    assert coverage([(iv, 100.0), (iv, 200.0)]) == 0.5
    # costs averaged over k runs: their level's own error adds sigma^2 / k of log variance
    for k in (1, 4):
        calibrated = throughput_interval([100.0], run_cv=0.1, level=0.9, calibration_runs=k)
        assert math.log(calibrated.high / 100) == pytest.approx(math.log(iv.high / 100) * math.sqrt(1 + 1 / k))
    # run_cv measured on nu degrees of freedom: its factor at a Student t quantile instead of z
    measured = throughput_interval([100.0], run_cv=0.1, level=0.9, run_cv_dof=2)
    assert math.log(measured.high / 100) == pytest.approx(stats.t.ppf(0.95, 2) * sigma)
    # the simulator's own error: another known log-normal factor, at the normal quantile
    modelled = throughput_interval([100.0], run_cv=0.1, level=0.9, model_cv=0.05)
    tau = math.sqrt(math.log1p(0.05 ** 2))
    assert math.log(modelled.high / 100) == pytest.approx(stats.norm.ppf(0.95) * math.hypot(sigma, tau))
    with pytest.raises(ValueError, match="calibration_runs"):
        throughput_interval([1.0], 0.1, calibration_runs=0)
    with pytest.raises(ValueError, match="level"):
        throughput_interval([1.0], 0.1, level=1.0)


def test_the_unplaced_load_slows_every_busy_worker_on_its_core() -> None:
    """The driver's core (``asyncopd/config/unplaced.py``): a worker alone there runs at
    1 / (1 + u); two sharing it at 1 / (1 + phi + u); a worker on another core is untouched."""
    done = _finish_times({1: 0.25}, teacher=0.0, learner=1.0)
    # teacher: 1.0 s at 1/1.25 (0.8 done), then 0.2 left at 1/2.25 -> 0.45 s: ends 1.45
    # learner: 0.45 s at 1/2.25 (0.2 done), 0.8 left at 1/1.25 -> 1.0 s: ends 2.45
    assert done == pytest.approx({"teacher-0": 1.45, "learner-0": 2.45, "rollout-0": 1.0})


@pytest.mark.parametrize("layout, core", [
    ({"rollout-0": (0,), "teacher-0": (1,), "learner-0": (1,)}, 1),  # the default: the teacher and learner's core
    ({"rollout-0": (0,), "teacher-0": (0,), "learner-0": (0,)}, 1),  # every role on core 0: the free core
    ({"rollout-0": (0,), "teacher-0": (0,), "learner-0": (1,)}, 1),  # the learner's core
    ({"rollout-0": (1,), "teacher-0": (0,), "learner-0": (0,)}, 0),  # the core without the rollout
    ({"rollout-0": (0,), "rollout-1": (1,), "teacher-0": (1,), "learner-0": (0, 1)}, 0),  # fewer workers
    ({"rollout-0": (0,), "rollout-1": (1,), "learner-0": (0, 1)}, 1),  # a tie: the last core
])
def test_the_unplaced_load_lands_on_the_least_busy_core(layout, core) -> None:
    from asyncopd.config.unplaced import unplaced_core

    assert unplaced_core(layout, 2) == core


def test_the_unplaced_load_is_off_on_gpus_and_its_core_is_checked() -> None:
    from asyncopd.config.placement import placement
    from asyncopd.config.unplaced import background_load

    cfg = load_config(None, ["sim.costs.unplaced_share=0.2"])
    assert background_load(cfg.sim.costs, cfg.cluster, placement(cfg.layout)) == {1: 0.2}
    gpu = load_config(None, ["sim.costs.unplaced_share=0.2", "cluster.device_type=cuda", "cluster.hardware=h100-sxm"])
    assert background_load(gpu.sim.costs, gpu.cluster, placement(gpu.layout)) == {}
    pinned = load_config(None, ["sim.costs.unplaced_share=0.2", "sim.costs.unplaced_device=0"])
    assert background_load(pinned.sim.costs, pinned.cluster, placement(pinned.layout)) == {0: 0.2}
    with pytest.raises(ValueError, match="sim.costs.unplaced_device"):
        load_config(None, ["sim.costs.unplaced_device=2"])
