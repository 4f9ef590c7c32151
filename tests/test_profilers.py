"""Hardware calibration: the fitter recovers known costs; a real short profile writes a complete,
loadable profile; ``calibrate --check`` tells a fresh profile from a wrong one; bad input fails
in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from asyncopd.cli import app
from asyncopd.config import load_config
from asyncopd.config.schema import SimCosts
from calibration.fit import fit_points, predict
from calibration.from_run import profile_overrides

runner = CliRunner()
DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
TRUE = {"decode_step_s": 2e-3, "decode_per_seq_s": 1e-4, "prefill_per_token_s": 3e-5, "teacher_fixed_s": 9e-3,
        "teacher_per_token_s": 4e-5, "learner_fixed_s": 1.2e-2, "learner_per_token_s": 1e-4, "sync_fixed_s": 1.5e-2,
        "sync_bytes_per_s": 2e9}


def synthetic_points(p: dict[str, float], kv_coef: float = 0.0, scale: float = 1.0) -> list[dict]:
    costs = SimCosts(**p)
    pts = [{"stage": "decode", "n": n, "kv": kv} for n in (1, 2, 4, 8) for kv in (10, 50, 90)]
    pts += [{"stage": "prefill", "n": n, "tokens": n * q} for n in (1, 4, 8) for q in (6, 13, 30)]
    pts += [{"stage": "teacher", "tokens": t, "top_k": 8} for t in (15, 128, 600, 1200)]
    pts += [{"stage": "learner", "tokens": t, "micro_batch_size": 16, "micro_batches": 1} for t in (60, 256, 1200)]
    pts += [{"stage": "sync", "bytes": b} for b in (6e4, 2.3e5, 3.4e6, 5.2e7)]
    for q in pts:
        q["seconds"] = scale * (predict(costs, q) + (kv_coef * q["n"] * q["kv"] if q["stage"] == "decode" else 0.0))
    return pts


def fitted(pts: list[dict]) -> dict[str, float]:
    return fit_points(pts, top_k=8, micro_batch_size=16).costs(model_bytes=1.0, dispatch_s=0.0)


def test_fitter_recovers_exact_linear_costs() -> None:
    fit = fit_points(synthetic_points(TRUE), top_k=8, micro_batch_size=16)
    got = fit.costs(model_bytes=123.0, dispatch_s=0.006)
    for k, v in TRUE.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    assert got["model_bytes"] == 123.0 and got["dispatch_s"] == 0.006
    assert all(f.mape < 1e-9 for f in fit.stages.values())
    assert fit.extras["decode_per_kv_token_s"]["value"] == pytest.approx(0.0, abs=1e-12)


def test_fitter_reports_the_kv_term() -> None:
    fit = fit_points(synthetic_points(TRUE, kv_coef=2e-7), top_k=8, micro_batch_size=16)
    kv = fit.extras["decode_per_kv_token_s"]
    assert kv["value"] == pytest.approx(2e-7, rel=1e-6) and kv["mape"] < 1e-9
    assert 0 < kv["share_at_max"] < 1 and fit.stages["decode"].mape > 0  # SimCosts leaves it out


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(TRUE)), st.floats(0.2, 5.0)), st.floats(0.01, 100.0))
def test_fit_scales_with_the_times(factors: dict[str, float], c: float) -> None:
    """Any non-negative linear costs are recovered; multiplying every time by ``c`` multiplies every
    time parameter by ``c`` (bandwidth by ``1/c``)."""
    p = {k: v * factors.get(k, 1.0) for k, v in TRUE.items()}
    base, scaled = fitted(synthetic_points(p)), fitted(synthetic_points(p, scale=c))
    for k, v in p.items():
        assert base[k] == pytest.approx(v, rel=1e-7), k
        want = v / c if k == "sync_bytes_per_s" else v * c
        assert scaled[k] == pytest.approx(want, rel=1e-7), k


# ------------------------------------------------------------------ a real profile of the built-in models
@pytest.fixture(scope="module")
def profile_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prof") / "profile.yaml"
    r = runner.invoke(app, ["calibrate", str(DEFAULT), "--budget", "6", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


def test_profile_is_complete_and_loads(profile_path: Path) -> None:
    data = yaml.safe_load(profile_path.read_text())
    assert data["source"] == "profile"
    for key in ("date", "hardware", "versions", "model", "fit", "points", "config", "notes"):
        assert data.get(key), key
    assert "decode_per_kv_token_s" in data["extras"]  # (the other extras need more than a tiny budget)
    for key in ("platform", "cpu_model", "cpu_count", "torch_threads"):
        assert key in data["hardware"], key
    assert set(data["hardware"]["torch_threads"]) == {"rollout", "teacher", "learner"}
    for lib in ("python", "torch", "transformers", "numpy", "asyncopd"):
        assert data["versions"][lib], lib
    assert data["model"]["student"]["spec"] == "builtin-student" and data["model"]["student"]["params"] > 0
    assert {p["stage"] for p in data["points"]} == {"decode", "prefill", "teacher", "learner", "sync"}
    assert set(data["fit"]) == {"decode", "prefill", "teacher", "learner", "sync"}
    costs = data["sim"]["costs"]
    assert set(costs) == set(SimCosts.model_fields)
    # a profile of single workers measures no sharing: it keeps the config's pairs
    assert costs["colocation_pairs"] == load_config(DEFAULT).sim.costs.colocation_pairs
    assert all(math.isfinite(v) and v >= 0 for v in costs.values() if v is not None and not isinstance(v, dict))
    for k in ("decode_step_s", "teacher_per_token_s", "learner_per_token_s", "sync_bytes_per_s", "model_bytes"):
        assert costs[k] > 0, k
    assert "dispatch_s" in data["notes"][0]
    cfg = load_config(DEFAULT, profile_overrides(profile_path))
    assert cfg.sim.costs.decode_step_s == pytest.approx(costs["decode_step_s"])


def test_check_tells_a_fresh_profile_from_a_wrong_one(profile_path: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["calibrate", "--check", str(profile_path), "--threshold", "3", "--budget", "3",
                            "--no-progress"])
    assert r.exit_code == 0 and "verdict: ok" in r.output, r.output
    data = yaml.safe_load(profile_path.read_text())
    costs = data["sim"]["costs"]
    for k in list(costs):
        if k == "sync_bytes_per_s":
            costs[k] /= 10
        elif k not in ("model_bytes", "dispatch_s") and isinstance(costs[k], (int, float)):  # (not unset, not maps)
            costs[k] *= 10
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(data, sort_keys=False))
    r = runner.invoke(app, ["calibrate", "--check", str(wrong), "--threshold", "3", "--budget", "3", "--no-progress"])
    assert r.exit_code == 1 and "drifted: re-calibrate" in r.output, r.output


# ------------------------------------------------------------------ from-run profiles share the metadata
def test_from_run_profile_has_metadata(tmp_path: Path) -> None:
    r = runner.invoke(app, ["simulate", str(DEFAULT), "--out", str(tmp_path / "run"), "--set", "run.total_steps=20",
                            "--no-plots", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["calibrate", "--from-run", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    data = yaml.safe_load((tmp_path / "run" / "calibration.yaml").read_text())
    assert data["source"] == "run" and data["source_run"] == str(tmp_path / "run")
    for key in ("date", "hardware", "versions", "config", "model", "fit"):
        assert data.get(key), key
    assert data["model"]["student"] == "builtin-student"
    load_config(DEFAULT, profile_overrides(tmp_path / "run" / "calibration.yaml"))


# ------------------------------------------------------------------ bad input: one line, exit 2
def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_cli_bad_input(tmp_path: Path) -> None:
    cases = [
        (["calibrate", "--check", str(tmp_path / "missing.yaml")], "calibration profile not found"),
        (["calibrate", "--check", str(_write(tmp_path / "a.yaml", {"fit": {}}))], "no sim.costs mapping"),
        (["calibrate", "--check", str(_write(tmp_path / "b.yaml", {"sim": {"costs": {"decode_step_s": -1}}}))],
         "sim.costs.decode_step_s"),
        (["calibrate", "--check", str(_write(tmp_path / "c.yaml", "sim: [unclosed"))], "not valid YAML"),
        (["calibrate", "--check", str(_write(tmp_path / "d.yaml", {"source": "run", "source_run": "r",
                                                                  "sim": {"costs": {}}}))], "holds no config"),
        (["calibrate", "--check", str(_write(tmp_path / "e.yaml", {"sim": {"costs": {}},
                                                                  "config": {"learner": {"lr": -1}}}))],
         "learner.lr"),
        (["calibrate", str(tmp_path / "nope.yaml")], "config file not found"),
        (["calibrate", str(DEFAULT), "--budget", "0"], "--budget"),
        (["calibrate", "--from-run", str(tmp_path), "--check", str(tmp_path / "a.yaml")], "--from-run"),
        (["calibrate", "--from-run", str(tmp_path)], "no trace.json"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and "Traceback" not in r.output, (args, r.output)
