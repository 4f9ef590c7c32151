"""Continuous batching in the simulator and in the fit: answers grouped by ``min_join``, and the
rollout costs of a continuous run recovered from its trace (``calibration/continuous_rollout.py``)."""

from __future__ import annotations

from collections import Counter

import pytest

from asyncopd.config import load_config
from asyncopd.trace.schema import read_jsonl
from calibration.from_run import fit_run, profile_overrides, write_profile
from sim.driver import simulate

TRUTH = {"decode_step_s": 0.001, "decode_per_seq_s": 0.0002, "prefill_per_token_s": 2e-5, "prefill_fixed_s": 0.0008,
         "teacher_fixed_s": 0.002, "teacher_per_token_s": 4e-6, "learner_fixed_s": 0.01, "learner_per_token_s": 1e-5,
         "sync_fixed_s": 0.0005, "dispatch_s": 0.001, "rollout_dispatch_s": 0.001, "return_s": 0.001}
BASE = ["cluster.num_devices=3", "layout.learner.devices=[2]", "rollout.batching=continuous", "run.total_steps=120",
        "sim.response_length.kind=lognormal", "sim.response_length.cv=0.8", "sim.prompt_tokens_mean=12",
        "sim.costs.model_bytes=0", "pipeline.policy=fully_async(eta=2)"]


def _deliveries(run) -> Counter:
    return Counter((r["worker"], r["gen_delivered"]) for r in read_jsonl(run / "samples.jsonl")
                   if r["gen_delivered"] is not None)


def test_answers_carry_min_join_samples_unless_the_worker_drained(tmp_path) -> None:
    sizes = {}
    for k in (1, 3):
        cfg = load_config(None, [*BASE, f"rollout.min_join={k}", *(f"sim.costs.{n}={v}" for n, v in TRUTH.items())])
        simulate(cfg, tmp_path / f"j{k}", progress=False)
        sizes[k] = _deliveries(tmp_path / f"j{k}")
    for r in read_jsonl(tmp_path / "j1" / "samples.jsonl"):  # min_join 1: each result at once
        if r["gen_delivered"] is not None and r["status"] != "aborted":
            assert r["gen_delivered"] == pytest.approx(r["gen_end"] + TRUTH["return_s"], abs=1e-9)
    small = sum(n < 3 for n in sizes[3].values())
    assert small <= 0.1 * len(sizes[3])  # (drained workers only: the gate holds them at a step's end)
    assert sum(sizes[3].values()) == sum(sizes[1].values())


def test_the_fit_recovers_a_continuous_runs_rollout_costs(tmp_path) -> None:
    cfg = load_config(None, [*BASE, *(f"sim.costs.{n}={v}" for n, v in TRUTH.items())])
    s1 = simulate(cfg, tmp_path / "run", progress=False)
    cal = fit_run(tmp_path / "run")
    fit = cal.stages["rollout"]
    assert set(fit.params) >= {"prefill_fixed_s", "prefill_per_token_s", "decode_step_s", "decode_per_seq_s"}
    assert fit.mape < 0.015  # (the even-rate estimate of the batch's tokens is the only approximation)
    got = cal.costs()
    for k in ("teacher_fixed_s", "teacher_per_token_s", "learner_fixed_s", "learner_per_token_s"):
        assert got[k] == pytest.approx(TRUTH[k], rel=1e-3), k
    prof = write_profile(cal, tmp_path / "profile.yaml")
    cfg2 = load_config(None, [*BASE, *profile_overrides(prof)])
    s2 = simulate(cfg2, tmp_path / "again", progress=False)
    assert s2["samples_per_s"] == pytest.approx(s1["samples_per_s"], rel=0.01)
    # and the wave fit on the same trace would not hold: it takes each join group for a wave
    from calibration.from_run import _fit_rollout, _rollout_data, _read_run

    _, samples, syncs = _read_run(tmp_path / "run")
    assert _fit_rollout(_rollout_data(samples, syncs)).mape > 2 * fit.mape
