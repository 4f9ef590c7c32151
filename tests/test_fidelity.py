"""Calibrate -> simulate -> train -> compare on a tiny setting: every reported number exists and is finite."""

from __future__ import annotations

import json
import math

import pytest

from asyncopd.config import load_config
from calibration.fidelity import COMBOS, run_fidelity, write_results
from calibration.from_run import fit_run, write_profile


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_calibrate_simulate_train_compare(tmp_path) -> None:
    from asyncopd.runtime.driver import train

    train(load_config("configs/default.yaml", ["run.total_steps=8"]), tmp_path / "calib", progress=False,
          evaluate=False)
    cal = fit_run(tmp_path / "calib")
    assert {"learner", "teacher", "rollout", "sync", "dispatch", "contention"} <= set(cal.stages)
    costs = cal.costs()
    pairs = costs.pop("colocation_pairs", {})
    assert all(_finite(v) and v >= 0 for v in [*costs.values(), *pairs.values()])
    profile = write_profile(cal, tmp_path / "calibration.yaml")
    combos = {"fully_async(eta=2)": COMBOS["fully_async(eta=2)"]}
    rows = run_fidelity("configs/default.yaml", profile, combos, tmp_path / "fid", steps=6, seeds=[0, 1], plots=True)
    assert len(rows) == 1
    r = rows[0]
    for k in ("predicted_samples_per_s", "measured_samples_per_s", "throughput_error", "predicted_staleness",
              "measured_staleness", "staleness_error", "ks"):
        assert _finite(getattr(r, k)), k
    assert 0 <= r.ks <= 1 and r.measured_samples_per_s > 0
    # predictions were written before the measured run existed
    preds = json.loads((tmp_path / "fid" / "predictions.json").read_text())
    assert preds["fully_async(eta=2)"]["samples_per_s"] == pytest.approx(r.predicted_samples_per_s)
    report = json.loads((tmp_path / "fid" / "0" / "compare" / "compare.json").read_text())
    for k in ("throughput_ratio", "throughput_error", "staleness_ks", "staleness_wasserstein"):
        assert _finite(report[k]), k
    assert all(_finite(v) for v in report["utilisation_error"].values()) and report["utilisation_error"]
    assert set(report["plots"]) >= {"staleness_hist", "staleness_cdf", "per_step"}
    md = (tmp_path / "fid" / "0" / "compare" / "report.md").read_text()
    assert "KS" in md and "samples/s" in md
    assert "MAPE" in write_results(rows, tmp_path / "fid").read_text()
