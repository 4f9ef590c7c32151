"""The vLLM backend's placement, engine arguments, weight-update call and start-up order, as pure logic.

vLLM cannot be installed or run on this machine (no GPU), so nothing here reaches vLLM: the
placement spec and the engine kwargs are plain data checked against the names the pinned vLLM
reads (``tensor_parallel_size``, ``distributed_executor_backend``, ``gpu_memory_utilization``,
``kv_cache_memory_bytes``, ``VLLM_RAY_BUNDLE_INDICES``, ``VLLM_RAY_PER_WORKER_GPUS``,
``VLLM_ENABLE_V1_MULTIPROCESSING``). The weight-update test uses a stand-in ``LLM`` that only
records the calls it receives: the one place a fake is accepted, because the real engine cannot
run here; what it checks is the call we make, not what vLLM does with it.
"""

from __future__ import annotations

import pytest

from asyncopd.backends.vllm_backend.engine_args import build_engine_kwargs, prepare_process_env
from asyncopd.backends.vllm_backend.placement import engine_placement
from asyncopd.backends.vllm_backend.startup import start_in_waves, startup_waves
from asyncopd.backends.vllm_backend.weights import load_weights_into_llm


def test_tp1_runs_the_engine_in_the_actor():
    p = engine_placement(1, 0.45)
    assert p.share == 0.45
    assert p.engine_kwargs == {"tensor_parallel_size": 1, "distributed_executor_backend": "uni"}
    assert p.engine_env == {} and p.unset_env == ()


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_above_one_puts_the_ranks_on_the_workers_bundles(tp):
    p = engine_placement(tp, 1.0)
    assert p.engine_kwargs == {"tensor_parallel_size": tp, "distributed_executor_backend": "ray"}
    assert p.engine_env == {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, range(tp))),
                            "VLLM_RAY_PER_WORKER_GPUS": "1.0"}
    assert p.unset_env == ("CUDA_VISIBLE_DEVICES",)
    shared = engine_placement(tp, 0.5, bundle_indices=range(3, 3 + tp))  # its devices' bundles on its node
    assert shared.engine_env == {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, range(3, 3 + tp))),
                                 "VLLM_RAY_PER_WORKER_GPUS": "0.5"}


@pytest.mark.parametrize("tp,share,message", [(0, 0.5, "tp must be >= 1"), (2, 0.0, "memory share"),
                                              (1, 1.5, "memory share")])
def test_placement_refuses_bad_input(tp, share, message):
    with pytest.raises(ValueError, match=message):
        engine_placement(tp, share)
    with pytest.raises(ValueError, match="distinct bundles"):
        engine_placement(2, 0.5, bundle_indices=[1, 1])


def test_engine_kwargs_use_the_pinned_names():
    kw = build_engine_kwargs("/ckpt", engine_placement(2, 0.4), role="rollout", dtype="bfloat16", seed=3,
                             max_num_seqs=16, enable_prefix_caching=True, skip_tokenizer_init=True, max_logprobs=20,
                             max_model_len=256, kv_cache_gb=1.5, logprobs_mode="processed_logprobs",
                             extra={"enforce_eager": True, "dtype": "float16"})
    assert kw == {"model": "/ckpt", "dtype": "float16", "seed": 3, "gpu_memory_utilization": 0.4, "max_num_seqs": 16,
                  "enable_prefix_caching": True, "skip_tokenizer_init": True, "max_logprobs": 20,
                  "tensor_parallel_size": 2, "distributed_executor_backend": "ray", "max_model_len": 256,
                  "kv_cache_memory_bytes": int(1.5 * 2**30), "logprobs_mode": "processed_logprobs",
                  "enforce_eager": True}
    plain = build_engine_kwargs("/m", engine_placement(1, 0.9), role="teacher", dtype="bfloat16", seed=0,
                                max_num_seqs=8, enable_prefix_caching=False, skip_tokenizer_init=True, max_logprobs=20)
    assert "kv_cache_memory_bytes" not in plain and "logprobs_mode" not in plain and "max_model_len" not in plain
    with pytest.raises(ValueError, match="tensor_parallel_size: set by layout.teacher.tp"):
        build_engine_kwargs("/m", engine_placement(1, 0.9), role="teacher", dtype="bfloat16", seed=0, max_num_seqs=8,
                            enable_prefix_caching=False, skip_tokenizer_init=True, max_logprobs=20,
                            extra={"tensor_parallel_size": 2})


def test_process_env_in_process_engine_core_and_ray_bundles():
    env = {"CUDA_VISIBLE_DEVICES": "", "KEEP": "1"}
    prepare_process_env(engine_placement(2, 1.0), env)
    assert env == {"KEEP": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_RAY_BUNDLE_INDICES": "0,1",
                   "VLLM_RAY_PER_WORKER_GPUS": "1.0"}
    env = {"CUDA_VISIBLE_DEVICES": "3"}
    prepare_process_env(engine_placement(1, 0.5), env)  # tp = 1: Ray's visible GPU stays
    assert env == {"CUDA_VISIBLE_DEVICES": "3", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


class RecordingLLM:
    """Stand-in for ``vllm.LLM`` (vLLM cannot run here): records the calls, nothing more."""

    def __init__(self, workers: int = 2) -> None:
        self.calls: list[tuple] = []
        self.workers = workers

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.calls.append(("collective_rpc", method, args, kwargs))
        return [None] * self.workers

    def reset_prefix_cache(self, reset_running_requests=False, reset_connector=False):
        self.calls.append(("reset_prefix_cache",))
        return True


def test_weight_update_calls_collective_rpc_reload_weights_then_resets_the_prefix_cache():
    llm = RecordingLLM(workers=4)  # e.g. tp = 4: vLLM runs the method on every rank
    w, b = object(), object()
    assert load_weights_into_llm(llm, {"lm_head.weight": w, "model.norm.bias": b}) == 4
    (kind, method, args, kwargs), reset = llm.calls
    assert (kind, method, args) == ("collective_rpc", "reload_weights", ())
    assert kwargs == {"weights_iterator": [("lm_head.weight", w), ("model.norm.bias", b)],
                      "is_checkpoint_format": True}
    assert reset == ("reset_prefix_cache",)
    assert not hasattr(llm, "apply_model")  # no pickled callable any more


def test_startup_waves_keep_engines_on_one_gpu_apart():
    devices = {"rollout-0": (0,), "rollout-1": (0,), "rollout-2": (2, 3), "teacher-0": (1,), "teacher-1": (0, 1),
               "learner-0": (1,)}
    waves = startup_waves(devices, ["rollout-0", "rollout-1", "rollout-2", "teacher-0", "teacher-1"])
    assert waves == [["rollout-0", "rollout-2", "teacher-0"], ["rollout-1"], ["teacher-1"], ["learner-0"]]
    assert startup_waves(devices, []) == [list(devices)]  # torch only: everything at once, as before
    with pytest.raises(ValueError, match="without devices"):
        startup_waves(devices, ["ghost-0"])


def test_start_in_waves_waits_for_each_wave_before_the_next():
    log: list[str] = []

    def create(name):
        log.append(f"create {name}")
        return name.upper()

    def wait(handles):
        log.append(f"wait {','.join(handles)}")

    handles = start_in_waves([["a", "b"], ["c"]], create, wait)
    assert handles == {"a": "A", "b": "B", "c": "C"}
    assert log == ["create a", "create b", "wait A,B", "create c", "wait C"]
