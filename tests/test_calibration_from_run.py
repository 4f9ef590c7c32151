"""Fitting the cost model to a run: on a simulated run it must recover the simulator's own parameters."""

from __future__ import annotations

import statistics

import pytest

from asyncopd.config import load_config
from asyncopd.trace.schema import read_jsonl
from calibration.from_run import fit_run, profile_overrides, write_profile
from sim.driver import simulate

TRUTH = {"decode_step_s": 0.003, "decode_per_seq_s": 0.0007, "prefill_per_token_s": 3e-5, "teacher_fixed_s": 0.02,
         "teacher_per_token_s": 4e-5, "learner_fixed_s": 0.07, "learner_per_token_s": 1.5e-4, "sync_fixed_s": 0.03,
         "dispatch_s": 0.004, "rollout_dispatch_s": 0.005, "return_s": 0.002}


# Each role on a device of its own: no contention, so the fit must be exact.
SEPARATE = ["cluster.num_devices=3", "layout.learner.devices=[2]"]
ONE_DEVICE_NOTE = ("learner: every run's learner has one device, so allreduce_bytes_per_s and allreduce_latency_s "
                   "keep their values; a run with the learner on two devices fits them (asyncopd calibrate "
                   "--from-run DP1_RUN --from-run DP2_RUN)")


@pytest.mark.parametrize("policy", ["sync", "fully_async(eta=2)"])
def test_fit_recovers_simulated_costs(tmp_path, policy) -> None:
    cfg = load_config(None, [*SEPARATE, "sim.response_length.kind=lognormal", "sim.response_length.cv=1.0",
                             "sim.prompt_tokens_mean=12", "sim.costs.model_bytes=0", f"pipeline.policy={policy}",
                             *(f"sim.costs.{k}={v}" for k, v in TRUTH.items())])
    simulate(cfg, tmp_path / "run", progress=False)
    cal = fit_run(tmp_path / "run")
    got = cal.costs()
    for k, v in TRUTH.items():
        assert got[k] == pytest.approx(v, rel=1e-3), k
    assert all(fit.mape < 1e-6 for fit in cal.stages.values())
    # The profile round-trips into a config that simulates the same run.
    prof = write_profile(cal, tmp_path / "profile.yaml")
    cfg2 = load_config(None, [*SEPARATE, "sim.response_length.kind=lognormal", "sim.response_length.cv=1.0",
                              "sim.prompt_tokens_mean=12", f"pipeline.policy={policy}", *profile_overrides(prof)])
    s1 = simulate(cfg, tmp_path / "a", progress=False)
    s2 = simulate(cfg2, tmp_path / "b", progress=False)
    assert s2["samples_per_s"] == pytest.approx(s1["samples_per_s"], rel=1e-6)


def test_missing_profile_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="profile not found"):
        profile_overrides(tmp_path / "nope.yaml")


@pytest.mark.parametrize("phi", [0.5, 1.0, 1.5])
def test_fit_undoes_sharing_and_recovers_the_colocation_factor(tmp_path, phi) -> None:
    """Default layout: the teacher and the learner share core 1. Their wall-clock spans are
    stretched by the sharing; the fit must take it out (no double counting) and find phi."""
    cfg = load_config(None, ["run.total_steps=60", "sim.response_length.kind=lognormal", "sim.prompt_tokens_mean=12",
                             "sim.costs.model_bytes=0", f"sim.costs.colocation_factor={phi}",
                             *(f"sim.costs.{k}={v}" for k, v in TRUTH.items())])
    simulate(cfg, tmp_path / "run", progress=False)
    cal = fit_run(tmp_path / "run")
    got = cal.costs()
    assert got["colocation_factor"] == pytest.approx(phi)
    for k in ("teacher_fixed_s", "teacher_per_token_s", "learner_fixed_s", "learner_per_token_s", "decode_step_s"):
        assert got[k] == pytest.approx(TRUTH[k], rel=1e-3), k
    assert cal.stages["contention"].n > 0  # spans that really overlapped


def test_fitted_noise_is_replayed_and_refitted(tmp_path) -> None:
    """``*_cv`` noise: seeded (same seed, same run), mean-preserving, and refitted close to the truth."""
    noise = ["sim.costs.teacher_cv=0.3", "sim.costs.learner_cv=0.2", "sim.costs.dispatch_cv=0.25"]
    base = ["run.total_steps=150", *SEPARATE, "sim.prompt_tokens_mean=12", "sim.costs.model_bytes=0",
            *(f"sim.costs.{k}={v}" for k, v in TRUTH.items())]
    cfg = load_config(None, [*base, *noise])
    a = simulate(cfg, tmp_path / "a", progress=False)
    b = simulate(cfg, None, progress=False)
    assert a["samples_per_s"] == b["samples_per_s"]
    quiet = simulate(load_config(None, base), None, progress=False)
    assert a["samples_per_s"] != quiet["samples_per_s"]
    got = fit_run(tmp_path / "a").costs()
    assert got["teacher_cv"] == pytest.approx(0.3, abs=0.06)
    assert got["learner_cv"] == pytest.approx(0.2, abs=0.06)
    assert got["dispatch_cv"] == pytest.approx(0.25, abs=0.06)
    assert got["decode_cv"] == 0.0 and got["sync_cv"] == 0.0
    # at the run's mean batch (its intercept and slope trade off: batches differ little in tokens)
    batches: dict[int, int] = {}
    for r in read_jsonl(tmp_path / "a" / "samples.jsonl"):
        if r["consumed_step"] is not None:
            batches[r["consumed_step"]] = batches.get(r["consumed_step"], 0) + r["prompt_tokens"] + r["response_tokens"]
    tokens = statistics.fmean(batches.values())
    assert got["learner_fixed_s"] + tokens * got["learner_per_token_s"] == pytest.approx(
        TRUTH["learner_fixed_s"] + tokens * TRUTH["learner_per_token_s"], rel=0.05)


def test_a_worker_on_two_shared_devices_pays_both_factors() -> None:
    """Gang scheduling: a 2-device worker runs only while both devices run it, so its slowdown
    is the product of the per-device factors (sim and calibration agree)."""
    from asyncopd.config.colocation import Sharing
    from calibration.contention import DeviceCrowd

    assert Sharing(0.7).gang_slowdown("learner", [[], []]) == 1.0
    assert Sharing(1.0).gang_slowdown("learner", [["rollout"]]) == 2.0
    assert Sharing(1.0).gang_slowdown("learner", [["rollout"], ["teacher", "teacher"]]) == pytest.approx(6.0)
    assert Sharing(0.5).gang_slowdown("learner", [["rollout"], ["teacher"]]) == pytest.approx(2.25)
    busy = {"learner-0": [(0.0, 10.0)], "rollout-0": [(0.0, 4.0)], "teacher-0": [(2.0, 6.0)]}
    where = {"learner-0": (0, 1), "rollout-0": (0,), "teacher-0": (1,)}
    crowd = DeviceCrowd(busy, where)
    # [0,2): rollout on 0 -> 2; [2,4): both -> 4; [4,6): teacher on 1 -> 2; [6,10): alone -> 1
    assert crowd.work("learner-0", 0.0, 10.0, 1.0) == pytest.approx(2 / 2 + 2 / 4 + 2 / 2 + 4)
    assert crowd.work("rollout-0", 0.0, 4.0, 1.0) == pytest.approx(4 / 2)


PAIRS = {"rollout+rollout": 1.3, "teacher+learner": 0.6}
TWO_ROLLOUT = ["run.total_steps=60", "layout.rollout.workers=2", "sim.response_length.kind=lognormal",
               "sim.prompt_tokens_mean=12", "sim.costs.model_bytes=0", "sim.costs.colocation_factor=1.0",
               *(f"sim.costs.{k}={v}" for k, v in TRUTH.items())]


def test_more_runs_add_the_pairs_their_layouts_show(tmp_path) -> None:
    """``calibrate --from-run A --from-run B``: A's costs, plus the pair only B shows. B's two
    rollout workers on one core are busy together all the time, so B alone cannot tell their
    ``phi`` from its decode costs; held to A's costs, it can."""
    from calibration.multi_run import fit_runs

    simulate(load_config(None, [*TWO_ROLLOUT[:1], *TWO_ROLLOUT[2:], "sim.costs.colocation_factor=0.6"]),
             tmp_path / "a", progress=False)
    simulate(load_config(None, [*TWO_ROLLOUT, f"sim.costs.colocation_pairs={PAIRS}"]), tmp_path / "b",
             progress=False)
    merged = fit_runs([tmp_path / "a", tmp_path / "b"])
    alone = fit_run(tmp_path / "a")
    assert alone.notes == [ONE_DEVICE_NOTE]  # teacher and learner also run apart: their phi is seen
    b_notes = [n for n in fit_run(tmp_path / "b").notes if n != ONE_DEVICE_NOTE]  # the rollouts never run apart
    assert len(b_notes) == 1 and b_notes[0].startswith("rollout+rollout: busy together")
    assert merged.costs()["colocation_pairs"] == pytest.approx(PAIRS, abs=0.05)
    assert merged.costs()["learner_fixed_s"] == alone.costs()["learner_fixed_s"]
    assert merged.pair_sources == {"teacher+learner": str(tmp_path / "a"), "rollout+rollout": str(tmp_path / "b")}
    prof = write_profile(merged, tmp_path / "merged.yaml")
    cfg = load_config(None, [*TWO_ROLLOUT, *profile_overrides(prof)])
    assert cfg.sim.costs.colocation_pairs == merged.costs()["colocation_pairs"]


def test_a_verify_bake_off_refines_the_plans_calibration(tmp_path) -> None:
    """``asyncopd plan --costs PROFILE --verify``: the pairs the bake-off's runs show and PROFILE
    lacks are added (here from simulated runs standing in for the trainer's)."""
    from asyncopd.planner.verify import Trial, refine_calibration

    simulate(load_config(None, [*TWO_ROLLOUT[:1], *TWO_ROLLOUT[2:], "sim.costs.colocation_factor=0.6"]),
             tmp_path / "ref", progress=False)
    profile = write_profile(fit_run(tmp_path / "ref"), tmp_path / "ref.yaml")
    simulate(load_config(None, [*TWO_ROLLOUT, f"sim.costs.colocation_pairs={PAIRS}"]), tmp_path / "v0",
             progress=False)
    trial = Trial(0, "[0] R2xtp1 | [1] T1xtp1 + L tp1", "fully_async(eta=2)", 1.0, 1.0,
                  [{"tokens_per_s": 1.0, "samples_per_s": 1.0, "run_dir": str(tmp_path / "v0")}])
    path, message = refine_calibration(profile, [trial], tmp_path / "plan", progress=False)
    assert path == tmp_path / "plan" / "calibration.yaml" and "rollout+rollout=1.3" in message
    assert load_config(None, profile_overrides(path)).sim.costs.colocation_pairs == pytest.approx(PAIRS, abs=0.05)
    bare = tmp_path / "bare.yaml"
    bare.write_text("sim:\n  costs: {decode_step_s: 0.003}\n")
    path, message = refine_calibration(bare, [trial], tmp_path / "plan2", progress=False)
    assert path is None and "asyncopd calibrate --from-run" in message


# ---------------------------------------------------------------- data-parallel learner
DP_TRUTH = {**TRUTH, "allreduce_bytes_per_s": 2e8, "allreduce_latency_s": 3e-4}


def _dp_run(tmp_path, name: str, devices: list[int], extra=()) -> None:
    cfg = load_config(None, ["cluster.num_devices=4", f"layout.learner.devices={devices}", "sim.prompt_tokens_mean=12",
                             "sim.response_length.kind=lognormal", "sim.response_length.cv=1.0",
                             "sim.costs.model_bytes=0", *extra, *(f"sim.costs.{k}={v}" for k, v in DP_TRUTH.items())])
    simulate(cfg, tmp_path / name, progress=False)


def test_dp1_and_dp2_runs_together_fit_the_gradient_all_reduce(tmp_path) -> None:
    """``calibrate --from-run DP1 --from-run DP2``: per-token cost from T/N, the all-reduce's
    time at N = 2 from the difference; one gradient volume, so the latency is held (at the
    run's value) and the bandwidth fitted."""
    from calibration.multi_run import fit_runs

    _dp_run(tmp_path, "dp1", [2])
    _dp_run(tmp_path, "dp2", [2, 3])
    alone = fit_run(tmp_path / "dp2")  # N = 2 alone: the traffic is a constant inside learner_fixed_s
    assert alone.costs()["learner_per_token_s"] == pytest.approx(TRUTH["learner_per_token_s"], rel=1e-3)
    assert alone.costs()["learner_fixed_s"] == pytest.approx(TRUTH["learner_fixed_s"], rel=1e-3)  # default held
    assert alone.costs()["allreduce_bytes_per_s"] == DP_TRUTH["allreduce_bytes_per_s"]  # held, and said so
    assert any("N=2" in n for n in alone.notes)
    both = fit_runs([tmp_path / "dp1", tmp_path / "dp2"])
    got = both.costs()
    for k in ("learner_fixed_s", "learner_per_token_s", "allreduce_bytes_per_s"):
        assert got[k] == pytest.approx(DP_TRUTH[k], rel=1e-3), k
    assert got["allreduce_latency_s"] == DP_TRUTH["allreduce_latency_s"]
    assert both.stages["learner"].n == 60 and both.stages["learner"].mape < 1e-6
    assert [n for n in both.notes if n.startswith("learner:")] == [
        "learner: allreduce_latency_s=0.0003 is kept (runs at N=[1, 2] show one gradient volume per N; a third N "
        "separates the latency from allreduce_bytes_per_s)"]


def test_the_learner_fit_recovers_all_four_terms_from_three_device_counts() -> None:
    """Synthetic step times at N = 1, 2, 4 (fsdp at 4): the fit separates fixed, per-token,
    bandwidth and latency exactly."""
    import numpy as np

    from calibration.data_parallel import LearnerSteps, fit_learner
    from sim.collectives import dp_comm_s

    f, p, bw, lat, grad = 0.02, 1e-4, 5e8, 2e-4, 4e6
    tokens = np.array([800.0, 1000.0, 1300.0, 900.0])
    runs = [LearnerSteps(f"n{n}", n, s, grad, tokens, f + p * tokens / n + dp_comm_s(s, grad, n, bw, lat))
            for n, s in ((1, "ddp"), (2, "ddp"), (4, "fsdp"))]
    fit, notes = fit_learner(runs)
    assert notes == []
    want = {"learner_fixed_s": f, "learner_per_token_s": p, "allreduce_bytes_per_s": bw, "allreduce_latency_s": lat}
    for k, v in want.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-6), k
    assert fit.params["learner_cv"] == 0.0


def test_run_scatter_is_the_pooled_log_variance_of_repeated_configs(tmp_path) -> None:
    """run_cv from repeats (calibration.multi_run.run_scatter) against the closed form: two
    groups of repeated configs (names differ, which does not count), one single run (no dof)."""
    import json
    import math

    import yaml

    from calibration.multi_run import run_scatter

    def run(name: str, policy: str, rate: float):
        d = tmp_path / name
        d.mkdir()
        (d / "config.yaml").write_text(yaml.safe_dump({"run": {"name": name, "output_dir": "x"},
                                                        "pipeline": {"policy": policy}}))
        (d / "summary.json").write_text(json.dumps({"samples_per_s": rate}))
        return d

    dirs = [run("a1", "sync", 100.0), run("a2", "sync", 120.0), run("a3", "sync", 90.0),
            run("b1", "step_off(1)", 150.0), run("b2", "step_off(1)", 140.0), run("c", "fully_async(eta=2)", 10.0)]
    ya, yb = [math.log(x) for x in (100, 120, 90)], [math.log(x) for x in (150, 140)]
    ss = sum((y - sum(ya) / 3) ** 2 for y in ya) + sum((y - sum(yb) / 2) ** 2 for y in yb)
    fit = run_scatter(dirs)
    assert fit is not None and fit.params["run_cv"] == pytest.approx(math.sqrt(math.expm1(ss / 3)), abs=1e-4)
    assert fit.params["run_cv_dof"] == 3
    assert run_scatter(dirs[3:4] + dirs[5:]) is None  # no config repeated


def test_repeats_of_one_config_average_their_costs_and_measure_run_cv(tmp_path) -> None:
    """``calibrate --from-run A --from-run A2`` where A2 repeats A's config: not another layout
    but another draw of the host, so the stage costs are the mean of the two fits (fitted under
    A's sharing factors), the pair's scatter gives run_cv, and the intervals learn that the costs'
    level is a mean of 2 runs (calibration_runs). A2 here is a run whose learner was
    twice as slow (a slow spell of the host), recorded under A's config."""
    import shutil

    from calibration.multi_run import fit_runs

    simulate(load_config(None, ["run.total_steps=40"]), tmp_path / "a", progress=False)
    c = load_config(None).sim.costs
    slow = load_config(None, ["run.total_steps=40", f"sim.costs.learner_fixed_s={2 * c.learner_fixed_s}",
                              f"sim.costs.learner_per_token_s={2 * c.learner_per_token_s}"])
    simulate(slow, tmp_path / "a2", progress=False)
    shutil.copy(tmp_path / "a" / "config.yaml", tmp_path / "a2" / "config.yaml")
    a, a2 = fit_run(tmp_path / "a"), fit_run(tmp_path / "a2")
    both = fit_runs([tmp_path / "a", tmp_path / "a2"])
    for k in ("learner_fixed_s", "learner_per_token_s", "teacher_fixed_s", "decode_step_s"):
        assert both.costs()[k] == pytest.approx((a.costs()[k] + a2.costs()[k]) / 2, rel=0.05), k
    assert both.costs()["learner_per_token_s"] > a.costs()["learner_per_token_s"] * 1.2
    assert "run_cv" in both.stages and both.costs()["run_cv"] > 0
    assert both.costs()["calibration_runs"] == 2 and "calibration_runs" not in a.costs()
    assert both.costs()["run_cv_dof"] == 1
    assert both.extra_runs == [] and any("averaged over 2 runs" in n for n in both.notes)


def test_a_weight_load_on_a_shared_core_is_slowed_and_the_fit_takes_that_out(tmp_path) -> None:
    """Loading weights is work on the worker's devices: two rollout workers on one core pause
    ``sync_fixed_s x (1 + phi)`` for a sync that lands while the other decodes (measured: 1.12 ms
    against 0.51 ms alone), ``sync_fixed_s`` otherwise; the fit, given the pair's factor, divides
    the sharing back out."""
    import json

    phi = 1.3
    simulate(load_config(None, [*TWO_ROLLOUT, "pipeline.policy=fully_async(eta=2)", "sim.costs.sync_fixed_s=0.02",
                                f"sim.costs.colocation_pairs={{'rollout+rollout': {phi}}}"]), tmp_path / "b",
             progress=False)
    pauses = [e["args"]["paused_s"] for e in json.loads((tmp_path / "b" / "trace.json").read_text())
              if e.get("ph") == "X" and e["name"] == "sync"]
    assert pauses and all(p == pytest.approx(0.02) or p == pytest.approx(0.02 * (1 + phi)) for p in pauses)
    assert any(p == pytest.approx(0.02 * (1 + phi)) for p in pauses)
    from asyncopd.config.colocation import Sharing  # (the pair's phi as calibrate --contention measures it)

    fitted = fit_run(tmp_path / "b", Sharing(1.0, {"rollout+rollout": phi})).costs()["sync_fixed_s"]
    # (not exact: the simulator slows a pause by the crowd at its start, the fit integrates the
    # crowd over it, and the other worker now and then starts or stops inside a pause)
    assert fitted == pytest.approx(0.02, rel=0.005)


def test_the_fit_takes_the_unplaced_load_out_of_the_costs_on_its_core(tmp_path) -> None:
    """The driver (``unplaced_cpu`` in a real run's summary) shares core 1 with the teacher and
    the learner in the default layout: the fit divides it out, so the profile's costs are the
    roles' own, and it carries ``unplaced_share`` for the simulator to put back wherever the
    load lands in another layout. Without the share the same spans fit inflated costs."""
    import json

    cfg = load_config(None, ["run.total_steps=60", "sim.response_length.kind=lognormal", "sim.prompt_tokens_mean=12",
                             "sim.costs.model_bytes=0", "sim.costs.colocation_factor=1.0", "sim.costs.unplaced_share=0.3",
                             *(f"sim.costs.{k}={v}" for k, v in TRUTH.items())])
    simulate(cfg, tmp_path / "run", progress=False)
    from asyncopd.config.colocation import Sharing

    summary = tmp_path / "run" / "summary.json"
    data = json.loads(summary.read_text())

    def fit_with(measured: dict | None) -> dict:
        summary.write_text(json.dumps(data | ({"unplaced_cpu": measured} if measured is not None else {})))
        return fit_run(tmp_path / "run", Sharing(1.0)).costs()

    for got in (fit_with(None),  # a simulated run: the load its config ran with
                fit_with({"driver_share": 0.25, "ray_system_share": 0.05})):  # as a real run records it
        assert got["unplaced_share"] == pytest.approx(0.3)
        for k in ("teacher_fixed_s", "teacher_per_token_s", "learner_fixed_s", "learner_per_token_s", "decode_step_s"):
            assert got[k] == pytest.approx(TRUTH[k], rel=1e-3), k
    inflated = fit_with({"driver_share": 0.0})  # a run that measured no load: its spans' stretch stays in the costs
    assert inflated["unplaced_share"] == 0.0
    assert inflated["teacher_per_token_s"] > 1.1 * TRUTH["teacher_per_token_s"]
