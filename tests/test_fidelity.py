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
    driver = costs.pop("driver_event_s", {})  # (the driver's seconds per answer, by kind)
    assert all(_finite(v) and v >= 0 for v in [*costs.values(), *pairs.values(), *driver.values()])
    profile = write_profile(cal, tmp_path / "calibration.yaml")
    combos = {"sync": COMBOS["sync"], "fully_async(eta=2)": COMBOS["fully_async(eta=2)"]}
    rows = run_fidelity("configs/default.yaml", profile, combos, tmp_path / "fid", steps=6, seeds=[0, 1], plots=True)
    assert len(rows) == 2
    base, r = rows
    assert base.predicted_speedup == base.measured_speedup == 1.0
    assert _finite(r.predicted_speedup) and _finite(r.measured_speedup) and _finite(r.speedup_error)
    assert r.measured_speedup == pytest.approx(r.measured_samples_per_s / base.measured_samples_per_s)  # one round
    assert r.predicted_discarded >= 0 and r.measured_discarded >= 0
    assert r.interval_low < r.predicted_samples_per_s < r.interval_high and r.runs == 1 and r.runs_inside in (0, 1)
    for k in ("predicted_samples_per_s", "measured_samples_per_s", "throughput_error", "predicted_staleness",
              "measured_staleness", "staleness_error", "ks"):
        assert _finite(getattr(r, k)), k
    assert 0 <= r.ks <= 1 and r.measured_samples_per_s > 0
    # predictions were written before the measured run existed
    preds = json.loads((tmp_path / "fid" / "predictions.json").read_text())
    assert preds["fully_async(eta=2)"]["samples_per_s"] == pytest.approx(r.predicted_samples_per_s)
    report = json.loads((tmp_path / "fid" / "1" / "compare" / "compare.json").read_text())
    for k in ("throughput_ratio", "throughput_error", "staleness_ks", "staleness_wasserstein"):
        assert _finite(report[k]), k
    assert all(_finite(v) for v in report["utilisation_error"].values()) and report["utilisation_error"]
    assert set(report["plots"]) >= {"staleness_hist", "staleness_cdf", "per_step"}
    md = (tmp_path / "fid" / "1" / "compare" / "report.md").read_text()
    assert "KS" in md and "samples/s" in md
    assert "MAPE" in write_results(rows, tmp_path / "fid").read_text()


def test_speedups_are_measured_from_each_rounds_pair() -> None:
    """Measured speedup = mean over rounds of (combination / sync) in the same round: a host
    slow in round 2 for both slows neither ratio (the interleaving cancels drift)."""
    from calibration.fidelity import FidelityRow, add_speedups

    def row(name, pred, meas):
        return FidelityRow(name, pred, meas, 0.0, 0.0, 0.0, 0.0, 0.0, "")

    rows = [row("sync", 100.0, 90.0), row("fully_async(eta=2)", 150.0, 120.0)]
    add_speedups(rows, {"sync": [100.0, 50.0], "fully_async(eta=2)": [140.0, 70.0]})  # round 2: host at half speed
    assert rows[1].predicted_speedup == 1.5 and rows[1].measured_speedup == pytest.approx(1.4)
    assert rows[1].speedup_error == pytest.approx(1.5 / 1.4 - 1) and not rows[1].ok["speedup"]
    assert rows[0].speedup_error == 0 and rows[0].ok["speedup"]
