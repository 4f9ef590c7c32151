"""Memory shares of workers sharing a GPU, ``<role>.engine_args``, and the trainer's refusal of tp > 1
on the torch backend: pure config logic (no vLLM, no GPU, no Ray)."""

from __future__ import annotations

import pytest

from asyncopd.config import ConfigError, load_config
from asyncopd.config.memory_shares import kv_cache_bytes, worker_shares, workers_by_device
from asyncopd.runtime.setup import _vllm_options, check_trainable


def cfg(*overrides: str):
    return load_config(None, ["cluster.device_type=cuda", "cluster.num_devices=4", *overrides])


def test_defaults_alone_and_equal_split():
    c = cfg()  # rollout on 0 alone, teacher and learner on 1
    assert workers_by_device(c) == {0: ["rollout-0"], 1: ["teacher-0", "learner-0"]}
    assert worker_shares(c) == {"rollout-0": 0.9, "teacher-0": 0.5, "learner-0": 0.5}
    c = cfg("rollout.gpu_memory_utilization=0.8", "layout.learner.devices=[2]")
    assert worker_shares(c) == {"rollout-0": 0.8, "teacher-0": 0.8, "learner-0": 1.0}


def test_set_shares_and_the_rest_split():
    c = cfg("layout.rollout={workers: 2, devices: [0], tp: 1}", "layout.learner.devices=[0]",
            "learner.memory_share=0.4")
    shares = worker_shares(c)
    assert shares["learner-0"] == 0.4 and shares["rollout-0"] == pytest.approx(0.3) == shares["rollout-1"]
    assert sum(shares[n] for n in workers_by_device(c)[0]) == pytest.approx(1.0)
    c = cfg("layout.rollout={workers: 2, devices: [0], tp: 1}", "rollout.memory_share=0.45",
            "layout.learner.devices=[0]")
    assert worker_shares(c)["learner-0"] == pytest.approx(0.1)


def test_tp_worker_takes_the_smallest_split_of_its_devices():
    # rollout and teacher both at tp 2 on [0, 1], the learner on 1: halves on 0, thirds on 1
    c = cfg("layout.rollout={workers: 1, devices: [0, 1], tp: 2}", "layout.teacher={workers: 1, devices: [0, 1], tp: 2}",
            "layout.learner.devices=[1]")
    assert worker_shares(c) == pytest.approx({"rollout-0": 1 / 3, "teacher-0": 1 / 3, "learner-0": 1 / 3})


@pytest.mark.parametrize("overrides,message", [
    (["rollout.memory_share=0.6", "learner.memory_share=0.5", "layout.learner.devices=[0]"],
     "memory shares on layout device 0 add up to 1.1 > 1: rollout.memory_share 0.6 (rollout-0) + "
     "learner.memory_share 0.5 (learner-0)"),
    (["layout.rollout={workers: 3, devices: [0], tp: 1}", "rollout.memory_share=0.4"],
     "memory shares on layout device 0 add up to 1.2 > 1"),
    (["teacher.memory_share=1.0"], "learner.memory_share: the set shares on layout device 1 use all of its memory, "
     "none is left for learner-0"),
    (["rollout.memory_share=0"], "rollout.memory_share"),
    (["teacher.kv_cache_gb=-1"], "teacher.kv_cache_gb"),
])
def test_share_errors_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        cfg(*overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def places(c):
    from asyncopd.config.actor_placement import plan_actors

    return {p.name: p for p in plan_actors(c)}


def test_engine_args_pass_through_except_what_other_fields_set():
    c = cfg("rollout.backend=vllm", "rollout.engine_args={enforce_eager: true, max_model_len: 512}",
            "rollout.kv_cache_gb=2.5", "layout.rollout.tp=1")
    opts = _vllm_options(c, places(c)["rollout-0"])
    assert opts == {"gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "kv_cache_gb": 2.5, "bundle_indices": [0],
                    "engine_args": {"enforce_eager": True, "max_model_len": 512}, "max_num_seqs": 8}
    assert kv_cache_bytes(2.5) == int(2.5 * 2**30) and kv_cache_bytes(None) is None
    assert _vllm_options(cfg(), places(cfg())["rollout-0"]) == {}  # torch: nothing
    ct = cfg("teacher.backend=vllm", "teacher.memory_share=0.35")
    t = _vllm_options(ct, places(ct)["teacher-0"])
    assert t["gpu_memory_utilization"] == 0.35 and "max_num_seqs" not in t
    for key, where in [("tensor_parallel_size", "layout.teacher.tp"), ("gpu_memory_utilization", "teacher.memory_share"),
                       ("kv_cache_memory_bytes", "teacher.kv_cache_gb"), ("model", "models.student")]:
        with pytest.raises(ConfigError, match=f"teacher.engine_args: {key}: set by {where}"):
            cfg(f"teacher.engine_args={{{key}: 1}}")


def test_torch_tp_above_one_is_refused_by_the_trainer_not_the_simulator():
    c = cfg("layout.rollout={workers: 1, devices: [0, 1], tp: 2}")  # loads: simulate and plan model tp > 1
    with pytest.raises(ValueError, match=r"layout.rollout.tp=2: the torch backend .* no tensor parallelism; use "
                                         r"rollout.backend=vllm, or tp=1 with more workers \(layout.rollout.workers\)"):
        check_trainable(c)
    with pytest.raises(ValueError, match="layout.teacher.tp=2"):
        check_trainable(cfg("layout.teacher={workers: 1, devices: [1, 2], tp: 2}"))
