"""The cluster planner (asyncopd/planner): search space, memory, search, outputs, the CLI."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from asyncopd.cli import app
from asyncopd.config import load_config
from asyncopd.config.placement import placement
from asyncopd.config.schema import OPDConfig
from asyncopd.control.policies import parse_policy
from asyncopd.planner import PlanOptions, plan_cluster, planner_config
from asyncopd.planner.memory import check_memory, learner_terms
from asyncopd.planner.space import (
    PARTITIONS,
    Layout,
    RolePlan,
    SpaceOptions,
    enumerate_layouts,
    policy_grid,
)
from asyncopd.planner.workload import Workload
from asyncopd.planner.write import save_plan
from asyncopd.catalog.hardware import get_hardware

GPU_CONFIG = "configs/h100x8-qwen3.yaml"
runner = CliRunner()


# ---------------------------------------------------------------- search space
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), per_node=st.sampled_from([1, 2, 4, 8]), heads=st.sampled_from([1, 2, 4, 6, 16]),
       oversub=st.sampled_from([(1,), (1, 2)]))
def test_every_layout_uses_each_device_once_within_the_cluster(n, per_node, heads, oversub) -> None:
    space = enumerate_layouts(SpaceOptions(num_devices=n, devices_per_node=per_node, student_heads=heads,
                                           teacher_heads=heads, rollout_oversubscription=oversub))
    for lay in space.layouts:
        groups = lay.groups()
        assert [r for _, roles in groups for r in roles] != [] and len(groups) == len(PARTITIONS[lay.colocation])
        seen: list[int] = []
        for g, roles in groups:
            seen += g.devices  # each device in exactly one group
            for r in roles:  # roles of a group share exactly its devices
                p = lay.role(r)
                assert p.devices == g.devices
                assert p.size % p.tp == 0 and p.tp <= per_node and heads % p.tp == 0
                if r == "learner":
                    assert p.workers == 1
                else:
                    assert p.workers * p.tp in [p.size * k for k in oversub]
                    assert p.per_device in oversub and (p.per_device == 1 or p.tp == p.size)
        assert sorted(seen) == list(range(n)) and lay.devices_used == n
        # the memory model's workers per device agree with where the drivers place them
        sec = {r: SimpleNamespace(**v) for r, v in lay.section().items()}
        counts = Counter((name.split("-")[0], d) for name, devs in placement(SimpleNamespace(**sec)).items()
                         for d in devs)
        for (role, d), k in counts.items():
            assert k == lay.role(role).per_device, (lay.describe(), role, d)
    for lay in space.layouts[:3]:  # and the config accepts it
        OPDConfig.model_validate({"layout": lay.section(), "cluster": {"num_devices": n}})


def test_small_cluster_enumeration_is_complete() -> None:
    space = enumerate_layouts(SpaceOptions(num_devices=2, devices_per_node=2, tp_values=(1,)))
    # 2 devices: [R][T+L], [R+L][T], [R+T][L] (one split each) and [R+T+L]; none needs 3 groups
    assert sorted(lay.colocation for lay in space.layouts) == ["all", "rollout+learner", "rollout+teacher",
                                                               "teacher+learner"]


def test_policy_grid_respects_the_per_sample_cap() -> None:
    grid = policy_grid()
    assert grid[0] == "sync" and "fully_async(eta=4)" in grid
    capped = policy_grid(max_staleness=2)
    assert capped[0] == "sync"
    for p in capped:
        bound = parse_policy(p).staleness_bound
        assert bound is not None and bound <= 2
    assert any(p.startswith("fully_async") for p in capped)
    assert policy_grid(max_staleness=0) == ["sync"]
    with pytest.raises(ValueError):
        policy_grid(policies=["warp_speed(3)"])


def test_planner_imports_neither_torch_nor_ray() -> None:
    code = ("import sys\n"
            "from asyncopd.planner import PlanOptions, plan_cluster, planner_config\n"
            "import asyncopd.planner.cli, asyncopd.planner.report\n"
            "res = plan_cluster(planner_config('configs/default.yaml'), PlanOptions(steps=2, jobs=1), progress=False)\n"
            "assert res.best is not None\n"
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- memory
def _gpu_workload(overrides=()):
    cfg = planner_config(GPU_CONFIG, list(overrides))
    return cfg, Workload.from_config(cfg), get_hardware(cfg.cluster.hardware)


def test_memory_infeasible_layout_is_rejected_with_its_reason() -> None:
    cfg, w, hw = _gpu_workload()
    # Qwen3-30B-A3B weights alone are ~61 GB: with the learner on the same single GPU it cannot fit
    lay = Layout("teacher+learner", RolePlan(0, 7, 1, 7), RolePlan(7, 1, 1, 1), RolePlan(7, 1, 1, 1), 8)
    check = check_memory(lay, w, hw, headroom=0.1)
    assert not check.ok
    assert "out of memory on device 7" in check.reason
    assert "teacher" in check.reason and "learner" in check.reason and "weights" in check.reason
    assert check.peak > check.usable == pytest.approx(0.9 * 80e9)
    ok = check_memory(Layout("none", RolePlan(0, 4, 1, 4), RolePlan(4, 2, 2, 1), RolePlan(6, 2, 1, 1), 8), w, hw, 0.1)
    assert ok.ok and ok.reason == "" and 0 < ok.rollout_share <= 0.9


def test_learner_states_cost_16_bytes_per_parameter() -> None:
    """ddp: every data-parallel rank holds a full replica (split only by tp); fsdp: the states
    are sharded over all D devices, plus the layers it all-gathers whole."""
    for dtype in ("bfloat16", "float32"):
        _, w, _ = _gpu_workload([f"models.dtype={dtype}"])
        t = learner_terms(w, devices=1, tp=1)
        assert t["weights+grads"] + t["optimizer"] == pytest.approx(16 * w.student.n_params)
        assert learner_terms(w, devices=1, tp=1, strategy="fsdp") == t  # one device: nothing to shard
        t4 = learner_terms(w, devices=4, tp=2)
        assert t4["weights+grads"] == pytest.approx(t["weights+grads"] / 2)
        assert t4["optimizer"] == pytest.approx(t["optimizer"] / 2)
        f4 = learner_terms(w, devices=4, tp=1, strategy="fsdp")
        assert f4["weights+grads"] + f4["optimizer"] == pytest.approx(16 * w.student.n_params / 4)
        assert f4["gathered"] == pytest.approx(2 * w.dtype_bytes * w.student.n_params / w.student.num_layers)


def test_a_student_too_big_for_ddp_fits_under_fsdp() -> None:
    """Qwen3-8B's states take 16 bytes x 8.2e9 params = 131 GB: no H100 holds a ddp replica, but
    sharded over four they take 33 GB each."""
    lay = Layout("none", RolePlan(0, 2, 2, 1), RolePlan(2, 2, 2, 1), RolePlan(4, 4, 1, 1), 8)
    _, ddp, hw = _gpu_workload(["models.student=qwen3-8b"])
    _, fsdp, _ = _gpu_workload(["models.student=qwen3-8b", "learner.strategy=fsdp"])
    assert ddp.learner_strategy == "ddp" and fsdp.learner_strategy == "fsdp"
    no = check_memory(lay, ddp, hw, headroom=0.1)
    assert not no.ok and "out of memory on devices 4-7: learner" in no.reason
    assert "learner.strategy: fsdp would shard the learner over its 4 devices and fit" in no.reason
    yes = check_memory(lay, fsdp, hw, headroom=0.1)
    assert yes.ok, yes.reason
    assert sum(yes.terms["learner"].values()) < 0.9 * 80e9 < sum(no.terms["learner"].values())


def test_plan_lists_rejections_and_fails_cleanly_when_nothing_fits(tmp_path) -> None:
    cfg = planner_config(GPU_CONFIG, ["models.teacher=qwen2.5-72b"], devices=2)
    res = plan_cluster(cfg, PlanOptions(budget_layouts=20, steps=2, jobs=1), progress=False)
    assert res.counts["rejected_memory"] == res.counts["layouts"] > 0 and not res.candidates
    assert all("out of memory" in why or "KV cache" in why for _, why in res.rejected)
    r = runner.invoke(app, ["plan", GPU_CONFIG, "--devices", "2", "--set", "models.teacher=qwen2.5-72b",
                            "--out", str(tmp_path / "p"), "--no-progress", "--no-plots"])
    assert r.exit_code == 1 and "fits in memory" in r.output
    rows = list(csv.DictReader((tmp_path / "p" / "rejected.csv").open()))
    assert rows and all(row["reason"] for row in rows)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,field", [
    (["--memory-headroom", "1.5"], "--memory-headroom"),
    (["--hardware", "tpu-v9"], "--hardware"),
    (["--devices", "0"], "--devices"),
    (["--policy", "warp_speed(3)"], "warp_speed"),
    (["--max-staleness", "-1"], "--max-staleness"),
    (["--set", "learner.batch_size=0"], "learner.batch_size"),
])
def test_bad_input_fails_with_one_line_naming_the_field(args, field, tmp_path) -> None:
    r = runner.invoke(app, ["plan", "configs/default.yaml", "--out", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert "error" in r.output and field in r.output


# ---------------------------------------------------------------- search and outputs
def test_plan_gpu_node_with_successive_halving(tmp_path) -> None:
    cfg = planner_config(GPU_CONFIG)
    res = plan_cluster(cfg, PlanOptions(budget_layouts=48, steps=4, finalists=4, jobs=2), progress=False)
    c = res.counts
    assert c["candidates"] > c["simulated"] == 48 and c["pruned_by_bound"] == c["candidates"] - 48
    assert res.mode == "successive halving" and len(res.rounds) >= 2
    assert [s for s, _, _ in res.rounds] == sorted(s for s, _, _ in res.rounds) and res.rounds[-1][0] == 4
    best, base = res.best, res.best_sync
    assert best is not None and base is not None and base.policy == "sync"
    assert res.speedup(best) == pytest.approx(best.throughput / base.throughput)
    assert all(c.steps == 4 for c in res.ranked())
    paths = save_plan(res, tmp_path, plots=True)
    assert paths["pareto"].stat().st_size > 0
    rows = list(csv.DictReader(paths["csv"].open()))
    assert rows[0]["rank"] == "1" and len(rows) == 48
    for col in ("samples_per_s", "speedup_vs_best_sync", "staleness_mean", "staleness_p95", "util_rollout",
                "util_teacher", "util_learner", "device_hours_per_1k_steps", "bottleneck", "status",
                "samples_per_s_low", "samples_per_s_high", "interval_seeds"):
        assert col in rows[0]
    # prediction intervals: 3 seeds for the 3 best and the best sync, the run factor alone for the rest
    seeded = {c.key for c in [*res.ranked()[:3], base]}
    assert res.counts["interval_simulations"] == 2 * len(seeded)
    for cand in res.candidates:
        if cand.steps != 4 or cand.error:
            assert cand.interval is None
            continue
        iv = cand.interval
        assert iv.seeds == (3 if cand.key in seeded else 1)
        assert iv.low < cand.result["samples_per_s"] < iv.high
        if iv.seeds == 1:  # the run and model factors alone: exp(+-z * sigma) around the point, z at 90%
            k = cfg.sim.costs.calibration_runs
            sigma = math.sqrt(math.log1p(cfg.sim.costs.run_cv ** 2) * (1 + 1 / k) + math.log1p(cfg.sim.costs.model_cv ** 2))
            assert iv.high / iv.point == pytest.approx(math.exp(1.6448536 * sigma), rel=1e-6)
    assert res.best.interval.seeds == 3 and rows[0]["interval_seeds"] == "3"
    written = load_config(paths["config"])
    assert written.layout.model_dump() == OPDConfig.model_validate({"layout": best.layout.section(), "cluster": {
        "num_devices": 8}}).layout.model_dump()
    assert written.run.total_steps == cfg.run.total_steps and written.pipeline.policy == best.policy


def test_mean_staleness_constraint_is_met_by_every_ranked_plan() -> None:
    cfg = planner_config("configs/default.yaml")
    res = plan_cluster(cfg, PlanOptions(steps=4, jobs=1, max_mean_staleness=0.5), progress=False)
    assert res.ranked()
    assert all((c.result or {})["staleness_mean"] <= 0.5 for c in res.ranked())
    assert any("mean staleness" in c.status for c in res.candidates)


def test_builtin_task_plans_cpu_core_layouts(tmp_path) -> None:
    cfg = planner_config("configs/default.yaml", ["run.total_steps=3"])
    res = plan_cluster(cfg, PlanOptions(steps=4, jobs=2), progress=False)
    assert res.best is not None
    paths = save_plan(res, tmp_path, plots=False)
    written = load_config(paths["config"])
    assert written.cluster.device_type == "cpu" and written.cluster.num_devices == 2
    assert written.run.total_steps == 3
    for role in ("rollout", "teacher", "learner"):
        assert set(getattr(written.layout, role).devices) <= {0, 1}
    assert yaml.safe_load(paths["config"].read_text())["pipeline"]["policy"] == res.best.policy


@pytest.mark.slow
def test_verified_plan_is_the_best_measured_and_runs_through_asyncopd_train(tmp_path) -> None:
    """``--verify 2``: two layouts run on this machine, the best measured becomes plan.yaml,
    plan.csv carries the measurements; then the written config trains as is."""
    import json

    from asyncopd.trace.schema import validate_run_dir

    r = runner.invoke(app, ["plan", "configs/default.yaml", "--set", "run.total_steps=3", "--steps", "4",
                            "--out", str(tmp_path / "plan"), "--no-progress", "--verify", "2", "--verify-steps", "3",
                            "--verify-repeats", "1"])
    assert r.exit_code == 0, r.output
    assert "chosen:" in r.output and (tmp_path / "plan" / "pareto.png").is_file()
    assert "chosen after verification" in r.output
    trials = json.loads((tmp_path / "plan" / "verify" / "verify.json").read_text())
    assert len(trials) == 2 and len({t["layout"] for t in trials}) == 2
    assert all(len(t["runs"]) == 1 and t["measured_tokens_per_s"] > 0 for t in trials)
    rows = list(csv.DictReader((tmp_path / "plan" / "plan.csv").open()))
    measured = [r for r in rows if r["measured_tokens_per_s"]]
    assert len(measured) == 2
    best = max(measured, key=lambda r: float(r["measured_tokens_per_s"]))
    assert rows[0] == best  # the chosen plan is the best measured one
    assert "measured on the planning machine" in (tmp_path / "plan" / "plan.yaml").read_text()
    assert json.loads((tmp_path / "plan" / "plan.json").read_text())["verify"][0]["layout"] == best["layout"]
    r = runner.invoke(app, ["train", str(tmp_path / "plan" / "plan.yaml"), "--out", str(tmp_path / "run"),
                            "--no-plots", "--no-progress"])
    assert r.exit_code == 0, r.output
    validate_run_dir(tmp_path / "run")
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["ok"] and summary["steps"] == 3


def test_verify_refuses_a_cluster_this_machine_cannot_run(tmp_path) -> None:
    r = runner.invoke(app, ["plan", "configs/default.yaml", "--devices", "64", "--steps", "2", "--budget-layouts",
                            "8", "--out", str(tmp_path), "--no-progress", "--no-plots", "--verify", "2"])
    assert r.exit_code == 2
    assert "--verify runs the plan on this machine" in r.output and "64" in r.output


def test_plan_names_device_sharing_its_calibration_has_not_measured() -> None:
    """The default layout's teacher+learner pair is measured by a calibration of the default run;
    a layout with two rollout workers on one core also needs rollout+rollout."""
    from asyncopd.planner.verify import contenders

    cfg = planner_config("configs/default.yaml", ["sim.costs.colocation_pairs={'teacher+learner': 0.9}"])
    res = plan_cluster(cfg, PlanOptions(steps=4, jobs=1), progress=False)
    for c in res.ranked()[:10]:
        pairs = res.unmeasured_pairs(c)
        assert "teacher+learner" not in pairs
        assert ("rollout+rollout" in pairs) == (c.layout.rollout.per_device > 1)
    three = contenders(res, 3)
    assert len({c.layout.describe() for c in three}) == 3 and three[0] is res.best


def test_plan_cluster_notebook() -> None:
    from tests.test_notebooks import run_notebook

    nb = run_notebook("plan_cluster.ipynb", {"BUDGET": 40, "STEPS": 3})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "chosen layout" in text and "predicted speedup over the best sync layout" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images
