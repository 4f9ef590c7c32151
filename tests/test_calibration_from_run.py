"""Fitting the cost model to a run: on a simulated run it must recover the simulator's own parameters."""

from __future__ import annotations

import pytest

from asyncopd.config import load_config
from calibration.from_run import fit_run, profile_overrides, write_profile
from sim.driver import simulate

TRUTH = {"decode_step_s": 0.003, "decode_per_seq_s": 0.0007, "prefill_per_token_s": 3e-5, "teacher_fixed_s": 0.02,
         "teacher_per_token_s": 4e-5, "learner_fixed_s": 0.07, "learner_per_token_s": 1.5e-4, "sync_fixed_s": 0.03,
         "dispatch_s": 0.004}


# Each role on a device of its own: no contention, so the fit must be exact.
SEPARATE = ["cluster.num_devices=3", "layout.learner.devices=[2]"]


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
