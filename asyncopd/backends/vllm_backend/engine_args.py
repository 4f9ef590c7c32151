"""The ``vllm.LLM`` keyword arguments and process environment of one engine (pure: no vllm import).

Names as in vLLM's ``EngineArgs`` (``vllm/engine/arg_utils.py``) and its config classes
(``vllm/config/cache.py``: ``gpu_memory_utilization``, ``kv_cache_memory_bytes``;
``vllm/config/parallel.py``: ``tensor_parallel_size``, ``distributed_executor_backend``;
``vllm/config/model.py``: ``logprobs_mode``, ``max_logprobs``), read in vLLM's source of the
version ``pyproject.toml`` pins; not run on a GPU here.

Memory: ``gpu_memory_utilization`` is the worker's share of each GPU (``config/memory_shares.py``),
vLLM's per-engine limit; ``kv_cache_gb`` sets ``kv_cache_memory_bytes`` instead, and vLLM then
sizes the KV cache from it, not from the share. ``extra`` (``<role>.engine_args``) is applied last,
unchanged, and may not touch what the layout and the shares decide (``RESERVED_ENGINE_ARGS``).

Environment: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` runs vLLM's engine core in the actor's own
process instead of a child process. The weight update hands the workers a list of (name, tensor)
through ``LLM.collective_rpc`` (``weights.py``); in-process, that list reaches the workers as
Python objects (directly with one GPU, through Ray with the Ray executor) rather than through the
engine-core socket's msgpack encoding. The placement's variables (``placement.py``) are set too.
"""

from __future__ import annotations

from typing import Any, MutableMapping, Optional

from asyncopd.backends.vllm_backend.placement import EnginePlacement, apply_engine_env
from asyncopd.config.memory_shares import check_engine_args, kv_cache_bytes

PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def build_engine_kwargs(model_path: str, placement: EnginePlacement, *, role: str, dtype: str, seed: int,
                        max_num_seqs: int, enable_prefix_caching: bool, skip_tokenizer_init: bool, max_logprobs: int,
                        max_model_len: Optional[int] = None, kv_cache_gb: Optional[float] = None,
                        logprobs_mode: Optional[str] = None, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (module docstring)."""
    kwargs: dict[str, Any] = dict(
        model=str(model_path), dtype=dtype, seed=int(seed), gpu_memory_utilization=float(placement.share),
        max_num_seqs=int(max_num_seqs), enable_prefix_caching=bool(enable_prefix_caching),
        skip_tokenizer_init=bool(skip_tokenizer_init), max_logprobs=int(max_logprobs), **placement.engine_kwargs)
    if max_model_len is not None:
        kwargs["max_model_len"] = int(max_model_len)
    kv = kv_cache_bytes(kv_cache_gb)
    if kv is not None:
        kwargs["kv_cache_memory_bytes"] = kv
    if logprobs_mode is not None:
        kwargs["logprobs_mode"] = logprobs_mode
    kwargs.update(check_engine_args(role, extra or {}))
    return kwargs


def prepare_process_env(placement: EnginePlacement, environ: MutableMapping[str, str]) -> None:
    """Set the engine's process environment (module docstring) in ``environ`` (``os.environ``)."""
    environ.update(PROCESS_ENV)
    apply_engine_env(placement, environ)
