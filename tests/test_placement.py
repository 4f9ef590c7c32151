"""Where actors run: nodes, devices, GPU fractions and memory shares (issue 13, item 4).

The pure rules (``config/actor_placement.py``) are checked directly; Ray's side on a local
cluster of two nodes started here, bound to loopback: the head declares 8 GPUs to Ray (no GPU
needed: Ray hands out GPU ids and sets ``CUDA_VISIBLE_DEVICES`` all the same), so the dry run
of the plan ``asyncopd plan configs/h100x8-qwen3.yaml`` writes is checked against it, and the
real trainer runs with roles on both nodes and records which node ran each worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncopd.config import load_config
from asyncopd.config.actor_placement import check_cluster, order_nodes, plan_actors, visible_device

ROOT = Path(__file__).resolve().parents[1]


def cfg(*overrides: str):
    return load_config(None, list(overrides))


def gpu_cfg(*overrides: str):
    return cfg("cluster.device_type=cuda", "cluster.num_devices=8", "cluster.devices_per_node=4", *overrides)


def places(c):
    return {p.name: p for p in plan_actors(c)}


# ----------------------------------------------------------------------------- the rules


def test_devices_map_to_nodes_and_bundles():
    c = gpu_cfg("layout.rollout={workers: 2, devices: [0, 1, 2, 3], tp: 2}", "layout.teacher={devices: [4]}",
                "layout.learner={devices: [5, 6]}")
    p = places(c)
    assert [p[n].node for n in ("rollout-0", "rollout-1", "teacher-0", "learner-0", "learner-0.rank1")] == [0, 0, 1, 1, 1]
    assert p["rollout-1"].devices == (2, 3) and p["rollout-1"].local == (2, 3) and p["rollout-1"].bundles == (2, 3)
    assert p["teacher-0"].local == (0,) and p["learner-0.rank1"].local == (2,) and p["learner-0.rank1"].bundles == (2,)
    assert p["learner-0.rank1"].index == 1 and p["learner-0.rank1"].role == "learner"
    # torch workers hold a whole GPU each here; nobody shares
    assert all(x.num_gpus == pytest.approx(1.0 if x.role == "learner" else 0.9) for x in p.values())


def test_shared_gpus_get_fractions_that_add_up():
    c = gpu_cfg("layout.teacher={devices: [1]}", "layout.learner={devices: [1]}", "teacher.memory_share=0.6")
    p = places(c)
    assert p["teacher-0"].num_gpus == pytest.approx(0.6) and p["learner-0"].num_gpus == pytest.approx(0.4)
    assert p["teacher-0"].bundles == p["learner-0"].bundles  # one bundle: one physical GPU


def test_a_vllm_tp_engine_holds_no_gpu_itself():
    c = gpu_cfg("rollout.backend=vllm", "layout.rollout={workers: 1, devices: [2, 3], tp: 2}")
    r = places(c)["rollout-0"]
    assert r.engine_tp == 2 and r.num_gpus == 0
    assert r.bundles == (1, 2)  # node 0's group holds the devices used there: 1 (teacher, learner), 2, 3


@pytest.mark.parametrize("overrides,message", [
    (["layout.rollout={workers: 1, devices: [3, 4], tp: 2}", "rollout.backend=vllm"], "must be on one node"),
    (["layout.rollout={workers: 3, devices: [0, 1]}"], "each worker needs its own devices"),
])
def test_impossible_placements_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message) as e:
        plan_actors(gpu_cfg(*overrides))
    assert str(e.value).startswith("layout.rollout")


def test_cpu_cores_are_local_to_their_node():
    c = cfg("cluster.num_devices=4", "cluster.devices_per_node=2", "layout.rollout={devices: [0]}",
            "layout.teacher={devices: [2]}", "layout.learner={devices: [1, 3]}")
    p = places(c)
    assert {n: (x.node, x.local) for n, x in p.items()} == {
        "rollout-0": (0, (0,)), "teacher-0": (1, (0,)), "learner-0": (0, (1,)), "learner-0.rank1": (1, (1,))}
    assert all(x.num_gpus == 0 and x.share is None for x in p.values())


def test_nodes_are_ordered_head_first_and_checked():
    nodes = [{"NodeID": "b", "NodeManagerAddress": "10.0.0.2", "Resources": {"GPU": 4, "CPU": 8}},
             {"NodeID": "a", "NodeManagerAddress": "10.0.0.3", "Resources": {"GPU": 4, "CPU": 8,
                                                                                  "node:__internal_head__": 1}},
             {"NodeID": "c", "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8}},
             {"NodeID": "d", "NodeManagerAddress": "10.0.0.0", "Resources": {"GPU": 4}, "Alive": False}]
    assert [n["NodeID"] for n in order_nodes(nodes, "GPU")] == ["a", "b"]
    c = gpu_cfg("layout.learner={devices: [6, 7]}")
    assert [n["NodeID"] for n in check_cluster(c, nodes)] == ["a", "b"]
    with pytest.raises(ValueError, match="Ray reports 1 node"):
        check_cluster(c, nodes[1:])
    small = [dict(nodes[1], Resources={"GPU": 2, "node:__internal_head__": 1}), nodes[0]]
    with pytest.raises(ValueError, match="node 0 .* has 2 GPUs"):
        check_cluster(gpu_cfg("layout.rollout={workers: 3, devices: [0, 1, 2]}"), small)


def test_the_torch_device_is_the_visible_one_not_the_layout_index():
    assert visible_device(["5"], "5", local=3) == 0  # Ray made GPU 5 the process's cuda:0
    assert visible_device([6, 7], "6,7", local=2) == 0
    assert visible_device(["3"], "1,3", local=0) == 1
    assert visible_device([], None, local=3) == 3  # Ray manages no GPUs: the node's own index


def test_outside_ray_a_process_has_no_ray_gpus():
    """``place`` also pins the micro-benchmarks' own process, where Ray is not running."""
    out = subprocess.run([sys.executable, "-c", "from asyncopd.runtime.actors import ray_gpu_ids; print(ray_gpu_ids())"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


# ----------------------------------------------------------------------------- on a Ray cluster


@pytest.fixture(scope="module")
def two_nodes():
    """Two Ray nodes on this machine, on loopback: the head declares 8 GPUs, the other 2 CPUs."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=2, num_gpus=8, node_ip_address="127.0.0.1", include_dashboard=False))
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def run_python(code: str, timeout: float = 300) -> str:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def dry_run_json(path: Path, address: str, *overrides: str) -> dict:
    code = ("import json; from asyncopd.config import load_config; from asyncopd.runtime.dry_run import dry_run; "
            f"print('JSON' + json.dumps(dry_run(load_config({str(path)!r}, {[f'cluster.ray_address={address}', *overrides]!r}))))")
    return json.loads(run_python(code).split("JSON", 1)[1])


@pytest.fixture(scope="module")
def h100_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan8")
    subprocess.run([sys.executable, "-m", "asyncopd", "plan", str(ROOT / "configs/h100x8-qwen3.yaml"), "--out", str(out)],
                   check=True, capture_output=True, cwd=ROOT, timeout=600)
    return out / "plan.yaml"


@pytest.mark.slow
def test_the_h100x8_plan_places_validly_on_a_declared_8_gpu_node(two_nodes, h100_plan):
    report = dry_run_json(h100_plan, two_nodes)
    rows = {r["actor"]: r for r in report["rows"]}
    cfg8 = load_config(str(h100_plan))
    assert set(rows) == {p.name for p in plan_actors(cfg8)}
    gpus_of: dict[int, set[str]] = {}
    for r in rows.values():
        assert r["ray_node"] == r["node"] == 0  # the head holds the GPUs
        if r["engine_tp"] == 1:
            assert len(r["ray_gpus"]) == 1 and r["cuda_visible"] == r["ray_gpus"][0] and r["device"] == "cuda:0"
            gpus_of.setdefault(r["layout_devices"][0], set()).add(r["ray_gpus"][0])
        else:  # a vLLM tp engine's actor holds no GPU; its ranks take its devices' bundles, one GPU each
            assert r["num_gpus"] == 0 and len(set(r["ray_gpus"])) == r["engine_tp"] == len(r["layout_devices"])
            for d, g in zip(r["layout_devices"], r["ray_gpus"]):
                gpus_of.setdefault(d, set()).add(g)
    # one physical GPU per layout device, never two devices on one GPU
    assert all(len(g) == 1 for g in gpus_of.values())
    assert len({next(iter(g)) for g in gpus_of.values()}) == len(gpus_of)
    assert any("preset" in n for n in report["notes"])  # simulator-only models: said, not refused


@pytest.mark.slow
def test_roles_sharing_a_gpu_share_one_physical_gpu_in_fractions(two_nodes):
    report = dry_run_json(ROOT / "configs/default.yaml", two_nodes, "cluster.device_type=cuda", "cluster.num_devices=2",
                          "teacher.memory_share=0.3")
    rows = {r["actor"]: r for r in report["rows"]}
    assert rows["teacher-0"]["ray_gpus"] == rows["learner-0"]["ray_gpus"] != rows["rollout-0"]["ray_gpus"]
    assert rows["teacher-0"]["num_gpus"] == pytest.approx(0.3) and rows["learner-0"]["num_gpus"] == pytest.approx(0.7)
    assert rows["teacher-0"]["memory_share"] + rows["learner-0"]["memory_share"] == pytest.approx(1.0)


@pytest.mark.slow
def test_the_trainer_runs_with_roles_on_two_nodes(two_nodes, tmp_path):
    """Rollout and a learner rank on node 0, the teacher and the other learner rank on node 1
    (DP=2 across the nodes, gloo); run.json records which node ran each worker."""
    overrides = [f"cluster.ray_address={two_nodes}", "cluster.num_devices=4", "cluster.devices_per_node=2",
                 "layout.rollout={devices: [0]}", "layout.teacher={devices: [2]}", "layout.learner={devices: [1, 3]}",
                 "run.total_steps=3", "learner.batch_size=8", "learner.micro_batch_size=8", "rollout.max_num_seqs=4"]
    code = ("import json; from asyncopd.config import load_config; from asyncopd.runtime.driver import train; "
            f"s = train(load_config('configs/default.yaml', {overrides!r}), {str(tmp_path / 'run')!r}, "
            "progress=False, evaluate=False); print('JSON' + json.dumps(s))")
    summary = json.loads(run_python(code).split("JSON", 1)[1])
    assert summary["ok"] and summary["learner_ranks"] == 2
    where = json.loads((tmp_path / "run" / "run.json").read_text())["placement"]
    assert {w: (p["node_index"], p["cores"]) for w, p in where.items()} == {
        "rollout-0": (0, [0]), "learner-0": (0, [1]), "teacher-0": (1, [0]), "learner-0.rank1": (1, [1])}
    assert where["rollout-0"]["node"] != where["teacher-0"]["node"]
