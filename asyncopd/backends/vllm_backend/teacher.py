"""Teacher scoring on vLLM: one prefill per item via ``prompt_logprobs``, a top-k payload.

Written against vLLM's public API of the version ``pyproject.toml`` pins; it has never run on a GPU.
Engine arguments, tensor parallelism and the memory share as for rollout (``engine_args.py``,
``placement.py``).

For an item with prompt length ``P`` and response length ``T``, the sequence
``x = prompt_ids + response_ids`` is submitted as a token-id prompt with
``SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=False)``. vLLM returns, for every
prompt position ``j >= 1``, ``log p_T(. | x_<j)`` at its ``k`` most likely ids plus the actual
``x_j`` (``None`` at ``j = 0``). Response token ``t`` is position ``j = P + t``, so

- ``topk_ids[t]``, ``topk_logprobs[t]``: the ``k`` largest entries there, descending (the actual
  token, when outside the top-k, is the extra ``k+1``-th entry and is left out);
- ``sampled_logprob[t] = log p_T(response_ids[t] | x_<P+t)``.

Shapes ``[T, k]`` int32 / float32 and ``[T]`` float32, as ``TorchTeacherScorer``; ``T = 0`` gives
empty arrays. The one generated token is discarded (vLLM's offline API needs ``max_tokens >= 1``).

The teacher is the target distribution: temperature 1, no truncation. The engine keeps vLLM's
default ``logprobs_mode`` (``raw_logprobs``: ``log_softmax`` of the model's logits), which at
temperature 1 is exactly ``log p_T``. Prefix caching is off by default: with it, older vLLM
releases could skip computing prompt log-probs for cached positions.

What vLLM's ``prompt_logprobs`` cannot provide is refused before a run starts
(``asyncopd.config.algorithm.check_backends``): the full-vocabulary distribution (dense losses),
ids sampled from ``p_T`` (``mc_forward_kl``) and ``log p_T`` at ids chosen by the student
(``ScoreRequest.query_ids``: ``reverse_kl_student_topk``, ``mc_reverse_kl``). A request with
``query_ids`` reaching this scorer anyway raises ``ValueError``.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from asyncopd.backends.base import ScoreRequest, TeacherPayload
from asyncopd.backends.vllm_backend.convert import (
    empty_payload,
    prompt_logprobs_to_payload,
    require_vllm,
    vllm_version,
)
from asyncopd.backends.vllm_backend.engine_args import build_engine_kwargs, prepare_process_env
from asyncopd.backends.vllm_backend.placement import engine_placement


def _vocab_size(llm: Any) -> Optional[int]:
    try:
        return int(llm.llm_engine.model_config.get_vocab_size())
    except Exception:  # noqa: BLE001 - best effort: the vocabulary check is a convenience
        return None


class VllmTeacherScorer:
    """``TeacherScorer`` over ``vllm.LLM`` (module docstring for the semantics).

    Args:
        model_path: a local Hugging Face checkpoint directory (or hub name) vLLM can load.
        top_k: ids per position in the payload, ``1 <= top_k <= vocab`` (``max_logprobs`` is raised
            to at least ``top_k``).
        pad_id: kept for interface parity with the torch scorer (vLLM needs no padding).
        num_samples, full_vocab: the torch scorer's options; anything but ``0`` / ``False`` raises
            ``ValueError`` (not available from ``prompt_logprobs``).
        gpu_memory_utilization, tensor_parallel_size, kv_cache_gb: the worker's memory share, GPUs
        and KV-cache size, as for ``VllmRolloutEngine``.
        dtype, max_num_seqs, max_model_len, enable_prefix_caching, skip_tokenizer_init, seed: passed
        to ``vllm.LLM``; ``engine_kwargs`` (``teacher.engine_args``) adds any other argument.
    """

    def __init__(self, model_path: str, *, top_k: int, pad_id: int, num_samples: int = 0, full_vocab: bool = False,
                 gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, dtype: str = "bfloat16", max_num_seqs: int = 256,
                 max_model_len: Optional[int] = None, enable_prefix_caching: bool = False,
                 skip_tokenizer_init: bool = True, seed: int = 0, kv_cache_gb: Optional[float] = None,
                 engine_kwargs: Optional[dict[str, Any]] = None,
                 bundle_indices: Optional[list[int]] = None) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if num_samples or full_vocab:
            raise ValueError("vLLM's prompt_logprobs give neither draws from p_T (num_samples) nor the full-vocabulary "
                             "distribution (full_vocab); check_backends refuses those losses with teacher.backend=vllm")
        vllm = require_vllm()
        self.vllm_version = vllm_version(vllm)
        self.top_k, self.pad_id = int(top_k), int(pad_id)
        self.placement = engine_placement(int(tensor_parallel_size), float(gpu_memory_utilization), bundle_indices)
        kwargs = build_engine_kwargs(
            model_path, self.placement, role="teacher", dtype=dtype, seed=seed, max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching, skip_tokenizer_init=skip_tokenizer_init,
            max_logprobs=max(20, self.top_k), max_model_len=max_model_len, kv_cache_gb=kv_cache_gb,
            extra=engine_kwargs)
        prepare_process_env(self.placement, os.environ)
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(**kwargs)
        self.vocab_size = _vocab_size(self.llm)
        if self.vocab_size is not None and self.top_k > self.vocab_size:
            raise ValueError(f"top_k={self.top_k} exceeds the teacher's vocabulary ({self.vocab_size}); "
                             f"use top_k <= {self.vocab_size}")

    def _params(self) -> Any:
        return self._sampling_params(n=1, max_tokens=1, temperature=1.0, prompt_logprobs=self.top_k,
                                     detokenize=False)

    def score(self, items: Sequence[ScoreRequest]) -> list[TeacherPayload]:
        """Payloads in the order of ``items``; one ``LLM.generate`` call over all items with a response."""
        reqs = list(items)
        out: list[Optional[TeacherPayload]] = [None] * len(reqs)
        todo: list[int] = []
        for j, r in enumerate(reqs):
            if r.query_ids is not None:
                raise ValueError(
                    f"sample {r.sample_id}: teacher queries at student-chosen ids (query_ids) are not available "
                    "from vLLM's prompt_logprobs; check_backends refuses such losses with teacher.backend=vllm, "
                    "use teacher.backend=torch")
            if not r.prompt_ids:
                raise ValueError(f"sample {r.sample_id}: empty prompt (the first response token needs a context)")
            if r.response_ids:
                todo.append(j)
            else:
                out[j] = empty_payload(r.sample_id, self.top_k)
        if todo:
            prompts = [{"prompt_token_ids": [int(t) for t in (*reqs[j].prompt_ids, *reqs[j].response_ids)]}
                       for j in todo]
            results = self.llm.generate(prompts, sampling_params=self._params(), use_tqdm=False)
            for j, res in zip(todo, results):
                r = reqs[j]
                out[j] = prompt_logprobs_to_payload(r.sample_id, len(r.prompt_ids), r.response_ids,
                                                    res.prompt_logprobs, self.top_k)
        return out  # type: ignore[return-value]
