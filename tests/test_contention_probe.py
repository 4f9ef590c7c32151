"""``asyncopd calibrate --contention`` (calibration/contention_probe.py): the slowdown and phi
arithmetic against hand-computed values, and a real measurement on one core."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from asyncopd.cli import app
from asyncopd.config import load_config
from asyncopd.config.colocation import ROLES, Sharing
from calibration.contention_probe import Measured, combos, summarise
from calibration.profile import profile_overrides
from sim.driver import simulate


def _measured(alone: dict[str, float], slow: dict[tuple[str, ...], dict[str, float]], rounds: int = 2) -> Measured:
    """Per-round walls: alone times drift by round (x1, x1.5); combinations scale with them."""
    m = Measured()
    for k in range(rounds):
        drift = 1.0 + 0.5 * k
        for combo in combos():
            for w in combo:
                role = w.rstrip("0123456789")
                s = slow.get(combo, {}).get(w, 1.0)
                m.add(combo, w, alone[role] * drift * s, alone[role] * drift * min(s, 1.2))
    return m


def test_combinations_are_alone_pairs_and_the_triple() -> None:
    c = combos()
    assert c[:3] == [("rollout0",), ("teacher0",), ("learner0",)]
    assert ("rollout0", "rollout1") in c and ("teacher0", "learner0") in c
    assert c[-1] == ("rollout0", "teacher0", "learner0") and len(c) == 3 + 6 + 1


def test_phi_from_pairs_and_the_triple_check_by_hand() -> None:
    alone = {"rollout": 0.3, "teacher": 0.05, "learner": 0.1}
    slow = {("rollout0", "teacher0"): {"rollout0": 2.6, "teacher0": 2.0},
            ("rollout0", "rollout1"): {"rollout0": 2.4, "rollout1": 2.6},
            ("rollout0", "teacher0", "learner0"): {"rollout0": 4.0, "teacher0": 3.0, "learner0": 3.2}}
    r = summarise(_measured(alone, slow), core=1, window_s=3.0, rounds=2)
    assert r.slowdown["rollout+teacher"] == pytest.approx({"rollout": 2.6, "teacher": 2.0})  # drift cancels
    assert r.slowdown_range["rollout+teacher"]["rollout"] == pytest.approx((2.6, 2.6))
    assert r.directed["rollout|teacher"] == pytest.approx(1.6) and r.directed["teacher|rollout"] == pytest.approx(1.0)
    assert r.directed["rollout|rollout"] == pytest.approx(1.5)  # mean of the two workers' 1.4 and 1.6
    assert r.pairs["rollout+teacher"] == pytest.approx(2 / (1 / 2.6 + 1 / 2.0) - 1)
    assert r.directed["teacher|learner"] == pytest.approx(0.0)  # a pair not slowed at all
    # triple: measured 4.0 against 1 + phi(r|t) + phi(r|l) = 1 + 1.6 + 0
    assert r.triple["rollout"] == pytest.approx((4.0, 2.6))
    assert r.alone_s["rollout"] == pytest.approx(0.3 * 1.25)
    assert r.cpu_inflation["rollout+teacher"]["rollout"] == pytest.approx(1.2)
    assert r.cpu_share["rollout+teacher"]["rollout"] == pytest.approx(1.2 / 2.6)


def test_calibrate_contention_measures_sharing_on_one_core(tmp_path: Path) -> None:
    """A real measurement (six spawned workers on one core, the default config's units): every pair slows both
    members down, the profile holds all nine directed factors, and simulate --costs reads them."""
    out = tmp_path / "contention.yaml"
    r = CliRunner().invoke(app, ["calibrate", "--contention", "--window", "0.8", "--rounds", "1", "--out", str(out),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "contention on core" in r.output
    data = yaml.safe_load(out.read_text())
    assert set(data["contention"]["triple"]) == set(ROLES)
    assert data["source"] == "contention"
    pairs = data["sim"]["costs"]["colocation_pairs"]
    assert set(pairs) == {f"{a}|{b}" for a in ROLES for b in ROLES}
    for combo, members in data["contention"]["slowdown"].items():
        if "+" in combo:  # one core, one torch thread each: sharing it costs every member
            assert all(s > 1.2 for s in members.values()), (combo, members)
    cfg = load_config("configs/default.yaml", profile_overrides(out))
    share = Sharing.of(cfg.sim.costs)
    assert share.phi("rollout", "teacher") == pytest.approx(pairs["rollout|teacher"])

    # a run's fit under the measured factors (--sharing PROFILE): none is fitted, all are kept
    sim_run = tmp_path / "sim"
    simulate(load_config("configs/default.yaml", ["run.total_steps=30"]), sim_run, progress=False)
    r = CliRunner().invoke(app, ["calibrate", "--from-run", str(sim_run), "--sharing", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    fitted = yaml.safe_load((sim_run / "calibration.yaml").read_text())
    assert fitted["fit"]["contention"]["params"]["colocation_pairs"] == pairs
    assert fitted["sim"]["costs"]["colocation_pairs"] == pairs and fitted["contention"]["core"] == data["contention"]["core"]
    r = CliRunner().invoke(app, ["calibrate", "--from-run", str(sim_run), "--sharing",
                                 str(sim_run / "config.yaml"), "--no-progress"])
    assert r.exit_code == 2 and "no measured sharing factors" in r.output


def test_contention_refuses_gpu_configs_and_bad_windows(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", "--contention", "--window", "0", "--no-progress"])
    assert r.exit_code == 2 and "--window must be > 0" in r.output
    r = runner.invoke(app, ["calibrate", "--contention", "configs/h100x8-qwen3.yaml", "--no-progress",
                            "--out", str(tmp_path / "x.yaml")])
    assert r.exit_code == 2 and "measures CPU cores" in r.output


def test_each_slowdown_reports_its_range_over_the_rounds() -> None:
    """Rounds that disagree (the host's caches at different moments): the mean is what the
    simulator gets, the range is shown beside it."""
    alone = {"rollout": 0.3, "teacher": 0.05, "learner": 0.1}
    m = _measured(alone, {}, rounds=2)
    pair = ("rollout0", "rollout1")
    for w, walls in (("rollout0", [2.0, 2.4 * 1.5]), ("rollout1", [2.2, 2.2 * 1.5])):  # (round 2 drifts x1.5)
        m.wall[pair][w] = [0.3 * x for x in walls]
    r = summarise(m, core=1, window_s=3.0, rounds=2)
    assert r.slowdown["rollout+rollout"]["rollout#0"] == pytest.approx(2.2)
    assert r.slowdown_range["rollout+rollout"]["rollout#0"] == pytest.approx((2.0, 2.4))
    assert r.slowdown_range["rollout+rollout"]["rollout#1"] == pytest.approx((2.2, 2.2))
    from calibration.report import contention_table
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(contention_table(r))
    assert "2.20x (2.00-2.40)" in console.export_text()


def test_a_probe_without_a_round_has_no_result() -> None:
    from calibration.contention_probe import ContentionProbe

    probe = ContentionProbe(load_config("configs/default.yaml"), None, window_s=1.0, progress=False)
    with pytest.raises(RuntimeError, match="no round measured yet"):
        probe.result()
    with pytest.raises(ValueError, match="window must be > 0"):
        ContentionProbe(load_config("configs/default.yaml"), None, window_s=0.0)
