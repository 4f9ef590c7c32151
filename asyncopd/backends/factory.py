"""Build the rollout engine and teacher scorer a config asks for (``rollout.backend``,
``teacher.backend``): the torch/transformers backend (CPU, CUDA) or the vLLM backend (CUDA,
optional; written against vLLM's API, not run in this project's CI). Called inside the Ray
actors, so heavy imports happen there."""

from __future__ import annotations

from typing import Any


def build_rollout_engine(backend: str, model_path: str, *, device: str, dtype: str, eos_id: int, pad_id: int,
                         max_new_tokens: int, temperature: float, top_p: float, seed: int, capture_top_k: int = 0,
                         capture_mc: int = 0, max_num_seqs: int = 8, gpu_memory_utilization: float = 0.9,
                         tensor_parallel_size: int = 1, kv_cache_gb: float | None = None,
                         engine_args: dict[str, Any] | None = None, bundle_indices: list[int] | None = None) -> Any:
    common = dict(eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, capture_top_k=capture_top_k, capture_mc=capture_mc)
    if backend == "torch":  # (lazy imports here: only the chosen backend loads; vllm may be absent)
        from asyncopd.backends.torch_backend import TorchRolloutEngine
        from asyncopd.models import load_causal_lm  # (lazy)

        return TorchRolloutEngine(load_causal_lm(model_path, dtype=dtype, device=device), device=device, **common)
    if backend == "vllm":
        from asyncopd.backends.vllm_backend import VllmRolloutEngine  # (lazy)

        return VllmRolloutEngine(model_path, dtype=dtype, max_num_seqs=max_num_seqs,
                                 gpu_memory_utilization=gpu_memory_utilization,
                                 tensor_parallel_size=tensor_parallel_size, kv_cache_gb=kv_cache_gb,
                                 engine_kwargs=engine_args, bundle_indices=bundle_indices, **common)
    raise ValueError(f"rollout.backend must be torch or vllm, got {backend!r}")


def build_teacher_scorer(backend: str, model_path: str, *, device: str, dtype: str, top_k: int, pad_id: int,
                         num_samples: int = 0, full_vocab: bool = False, seed: int = 0,
                         gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                         kv_cache_gb: float | None = None, engine_args: dict[str, Any] | None = None,
                         bundle_indices: list[int] | None = None) -> Any:
    common = dict(top_k=top_k, pad_id=pad_id, num_samples=num_samples, full_vocab=full_vocab, seed=seed)
    if backend == "torch":  # (lazy imports here: only the chosen backend loads; vllm may be absent)
        from asyncopd.backends.torch_backend import TorchTeacherScorer
        from asyncopd.models import load_causal_lm  # (lazy)

        return TorchTeacherScorer(load_causal_lm(model_path, dtype=dtype, device=device), device=device, **common)
    if backend == "vllm":
        from asyncopd.backends.vllm_backend import VllmTeacherScorer  # (lazy)

        return VllmTeacherScorer(model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                 tensor_parallel_size=tensor_parallel_size, kv_cache_gb=kv_cache_gb,
                                 engine_kwargs=engine_args, bundle_indices=bundle_indices, **common)
    raise ValueError(f"teacher.backend must be torch or vllm, got {backend!r}")
