"""Rollout on vLLM's offline ``LLM`` engine, with weight updates at chunk boundaries.

Written against vLLM's public API (``vllm.LLM``, ``vllm.SamplingParams``, ``LLM.collective_rpc``,
``LLM.reset_prefix_cache``) of the version ``pyproject.toml`` pins; it has never run on a GPU.

Sampling and behaviour log-probabilities
----------------------------------------
Each request is ``SamplingParams(n=1, temperature=tau, top_p=p, max_tokens=..., seed=...,
logprobs=max(1, K), stop_token_ids=eos_ids, ignore_eos=True, detokenize=False)`` on a token-id
prompt ``{"prompt_token_ids": [...]}``. ``ignore_eos=True`` turns off the model's own
(generation-config) EOS so that, as in the torch engine, exactly ``eos_id`` ends a sequence; the
EOS token is kept in ``response_ids``. vLLM returns, per generated token ``y_t``, a dict
``{id: Logprob}`` with the ``max(1, K)`` most likely ids plus ``y_t``, and

    behaviour_logprobs[t] = dict[y_t].logprob,   capture.topk_*[t] = its K largest entries.

What distribution those are of depends on vLLM's ``logprobs_mode`` engine argument:

- ``processed_logprobs`` (requested whenever the installed vLLM has ``EngineArgs.logprobs_mode``):
  after temperature and top-p, i.e. ``log mu_t`` of the distribution ``y_t`` was drawn from
  (``-inf`` outside the nucleus), the same quantity as the torch engine's;
- otherwise vLLM's default, ``raw_logprobs`` in the V1 engine: ``log_softmax`` of the *untempered*
  logits. With ``temperature == 1`` and ``top_p == 1`` that is still ``log mu_t``; with any other
  setting it is NOT (a stated limit: importance ratios pi/mu use the wrong mu). A warning is
  logged and ``self.logprobs_mode`` says which mode is in force.

vLLM's nucleus rule and its clamp of tiny temperatures (< 0.01) may differ at the margin from
``torch_backend/sampling.py``; ``temperature = 0`` (greedy) reports the model's log-probs, not 0.

Step boundaries and weight updates
----------------------------------
``LLM.generate`` runs a whole batch to completion, with no hook between decode steps. So, when a
``step_hook`` is given, the batch is generated in chunks of ``sync_chunk_tokens`` new tokens: each
unfinished sequence is re-submitted as the prompt ``prompt + tokens so far`` with
``max_tokens = min(chunk, max_new_tokens - generated)``. With ``enable_prefix_caching=True`` the
re-submitted prefix hits vLLM's prefix cache (full KV blocks), so a continuation costs a prefill of
the last partial block only. Each chunk uses its own seed (``convert.request_seed``) so the random
stream never repeats. Between chunks ``step_hook()`` is called (when something is in flight):

- evictions: those sequences end with ``status="aborted", abort_reason="evict"``;
- an update: the state dict is loaded into vLLM's model in place and the prefix cache is reset
  (``weights.py``: ``LLM.collective_rpc("reload_weights")``, then ``LLM.reset_prefix_cache``),
  ``version`` becomes ``update.version`` and later tokens are tagged with it. Then by ``pause_mode``:

  * ``recompute``: in-flight sequences continue; the next chunk re-prefills prompt + tokens so
    far under the new weights (the cache was reset);
  * ``keep``: behaves exactly like ``recompute`` here. vLLM's offline API cannot keep an
    in-flight sequence's old-weight KV cache across a re-submission once the prefix cache is
    reset, and not resetting it would let *new* requests reuse stale KV. The sample is still
    mixed-version (token_versions says which weights sampled each token);
  * ``abort``: every in-flight sequence ends with ``abort_reason="sync_abort"``.

Granularity: a sync or an eviction takes effect at most ``sync_chunk_tokens`` tokens late, and
``finished_at`` is the time the chunk that finished a sequence returned. ``started_at`` is when
``generate`` was called (every request enters the batch then). Without a hook, one
``LLM.generate`` call produces the whole responses.

Weights are reloaded through ``LLM.collective_rpc("reload_weights", ...)`` (``weights.py``) with
the engine core in this process (``engine_args.py``); the engine's arguments, tensor parallelism
(``placement.py``) and memory share come from ``engine_args.build_engine_kwargs``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from asyncopd.backends.base import (
    GenRequest,
    GenResult,
    RolloutCapture,
    StepHook,
    check_sampling_args,
    WeightUpdate,
)
from asyncopd.backends.vllm_backend.convert import (
    request_seed,
    require_vllm,
    sample_logprobs_to_arrays,
    supports_logprobs_mode,
    vllm_version,
)
from asyncopd.backends.vllm_backend.engine_args import build_engine_kwargs, prepare_process_env
from asyncopd.backends.vllm_backend.placement import engine_placement
from asyncopd.backends.vllm_backend.weights import load_weights_into_llm

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- chunk bookkeeping (no vllm)
@dataclass
class SeqState:
    """One request's progress across chunks."""

    request: GenRequest
    response: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    topk_ids: list[np.ndarray] = field(default_factory=list)  # [n, K] per chunk
    topk_lps: list[np.ndarray] = field(default_factory=list)
    outcome: Optional[tuple[str, str, str, float]] = None  # status, finish_reason, abort_reason, time

    @property
    def live(self) -> bool:
        return self.outcome is None

    def finish(self, status: str, finish_reason: str, abort_reason: str, at: float) -> None:
        if self.outcome is None:
            self.outcome = (status, finish_reason, abort_reason, at)

    def next_prompt(self) -> list[int]:
        """What to submit to continue this sequence: prompt + tokens generated so far."""
        return list(self.request.prompt_ids) + self.response

    def to_result(self, started: float, top_k: int) -> GenResult:
        status, finish_reason, abort_reason, at = self.outcome or ("aborted", "aborted", "unfinished", time.time())
        capture = None
        if top_k > 0:
            ids = np.concatenate(self.topk_ids) if self.topk_ids else np.zeros((0, top_k), np.int32)
            lps = np.concatenate(self.topk_lps) if self.topk_lps else np.zeros((0, top_k), np.float32)
            capture = RolloutCapture(topk_ids=ids, topk_logprobs=lps)
        r = self.request
        return GenResult(sample_id=r.sample_id, prompt_id=r.prompt_id, prompt_ids=list(r.prompt_ids),
                         response_ids=list(self.response), behaviour_logprobs=list(self.logps),
                         token_versions=list(self.versions), started_at=started, finished_at=at,
                         status=status, abort_reason=abort_reason, finish_reason=finish_reason,  # type: ignore[arg-type]
                         capture=capture)


def chunk_budget(generated: int, max_new_tokens: int, chunk: int) -> int:
    """``max_tokens`` for the next chunk of a sequence that has ``generated`` tokens."""
    return max(0, min(chunk, max_new_tokens - generated))


def absorb_chunk(seq: SeqState, token_ids: Sequence[int], logprobs: Any, finish_reason: Optional[str],
                 requested: int, *, version: int, eos_ids: frozenset[int], max_new_tokens: int, top_k: int,
                 now: float) -> int:
    """Append one chunk's tokens to ``seq`` (tagged ``version``) and decide whether it ended:
    EOS -> ``eos``; ``max_new_tokens`` reached -> ``length``; fewer tokens than ``requested``
    without either -> vLLM stopped it (``stop`` -> eos, ``abort`` -> aborted, else ``length``, e.g.
    ``max_model_len``). Tokens after an EOS (none expected) are dropped. Returns tokens kept."""
    token_ids = [int(t) for t in token_ids]
    behaviour, tk_ids, tk_lps = sample_logprobs_to_arrays(token_ids, logprobs, top_k)
    keep, reason = len(token_ids), None
    for j, tok in enumerate(token_ids):
        if tok in eos_ids:
            keep, reason = j + 1, "eos"
            break
        if len(seq.response) + j + 1 >= max_new_tokens:
            keep, reason = j + 1, "length"
            break
    seq.response.extend(token_ids[:keep])
    seq.logps.extend(float(x) for x in behaviour[:keep])
    seq.versions.extend([int(version)] * keep)
    if tk_ids is not None and tk_lps is not None:
        seq.topk_ids.append(tk_ids[:keep])
        seq.topk_lps.append(tk_lps[:keep])
    if reason is not None:
        seq.finish("finished", reason, "", now)
    elif keep < requested:
        if finish_reason == "abort":
            seq.finish("aborted", "aborted", "engine_abort", now)
        else:
            seq.finish("finished", "eos" if finish_reason == "stop" else "length", "", now)
    return keep


# ---------------------------------------------------------------- the engine
class VllmRolloutEngine:
    """``RolloutEngine`` over ``vllm.LLM`` (module docstring for the semantics).

    Args:
        model_path: a local Hugging Face checkpoint directory (or hub name) vLLM can load.
        eos_id: end-of-sequence id(s), passed as ``stop_token_ids``; ``None``: only length ends.
        pad_id: kept for interface parity with the torch engine (vLLM needs no padding).
        max_new_tokens, temperature, top_p, seed: as in ``TorchRolloutEngine``.
        top_k_capture: ``K > 0`` records the top-K of mu per position (``GenResult.capture``);
            ``capture_top_k`` is the same, under the torch engine's name. ``capture_mc > 0`` is
            refused (``ValueError``): vLLM draws one token per position.
        sync_chunk_tokens: tokens per chunk between ``step_hook`` calls.
        gpu_memory_utilization: this worker's share of each of its GPUs (``config/memory_shares.py``).
        tensor_parallel_size: GPUs of this engine; > 1 runs vLLM's Ray executor in the placement
            group the actor was started in (``placement.py``).
        kv_cache_gb: a fixed KV-cache size per GPU instead of the share's remainder.
        max_num_seqs, dtype, max_model_len, enable_prefix_caching, skip_tokenizer_init: passed to
        ``vllm.LLM``; ``engine_kwargs`` (``rollout.engine_args``) adds any other ``vllm.LLM`` argument.
    """

    def __init__(self, model_path: str, *, eos_id: int | Iterable[int] | None, pad_id: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, top_k_capture: int = 0,
                 capture_top_k: Optional[int] = None, capture_mc: int = 0, sync_chunk_tokens: int = 32,
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, max_num_seqs: int = 256,
                 dtype: str = "bfloat16", max_model_len: Optional[int] = None,
                 enable_prefix_caching: bool = True, skip_tokenizer_init: bool = True,
                 kv_cache_gb: Optional[float] = None, engine_kwargs: Optional[dict[str, Any]] = None,
                 bundle_indices: Optional[list[int]] = None) -> None:
        check_sampling_args(max_new_tokens, temperature, top_p)
        if capture_top_k is not None:
            top_k_capture = capture_top_k
        if capture_mc:
            raise ValueError(f"capture_mc={capture_mc}: vLLM samples one token per position and cannot draw extra "
                             "samples from the same distribution (check_backends refuses mc_* losses with vllm)")
        if top_k_capture < 0 or sync_chunk_tokens < 1:
            raise ValueError(f"need top_k_capture >= 0 and sync_chunk_tokens >= 1, got {top_k_capture}, "
                             f"{sync_chunk_tokens}")
        vllm = require_vllm()
        self.vllm_version = vllm_version(vllm)
        ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, int) else list(eos_id)
        self.eos_ids: frozenset[int] = frozenset(int(e) for e in ids)
        self.pad_id, self.max_new_tokens = int(pad_id), int(max_new_tokens)
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.top_k_capture, self.sync_chunk_tokens = int(top_k_capture), int(sync_chunk_tokens)
        self.placement = engine_placement(int(tensor_parallel_size), float(gpu_memory_utilization), bundle_indices)
        mode = "processed_logprobs" if supports_logprobs_mode(getattr(vllm, "EngineArgs", None)) else None
        kwargs = build_engine_kwargs(
            model_path, self.placement, role="rollout", dtype=dtype, seed=self.seed, max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching, skip_tokenizer_init=skip_tokenizer_init,
            max_logprobs=max(20, self.top_k_capture), max_model_len=max_model_len, kv_cache_gb=kv_cache_gb,
            logprobs_mode=mode, extra=engine_kwargs)
        prepare_process_env(self.placement, os.environ)
        self.logprobs_mode = str(kwargs.get("logprobs_mode", "raw_logprobs"))
        if self.logprobs_mode != "processed_logprobs" and (self.temperature != 1.0 or self.top_p < 1.0):
            log.warning("vLLM %s: logprobs_mode is %s, not processed_logprobs: behaviour log-probs are of the "
                        "untempered model distribution, not of mu (temperature=%s, top_p=%s)", self.vllm_version,
                        self.logprobs_mode, self.temperature, self.top_p)
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(**kwargs)
        self.version = 0
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ weights
    def set_weights(self, update: WeightUpdate) -> None:
        """Load ``update.state_dict`` now (the engine is idle) and take its version."""
        load_weights_into_llm(self.llm, update.state_dict, self.vllm_version)
        self.version = int(update.version)

    # ------------------------------------------------------------------ generation
    def _params(self, max_tokens: int, seed: int) -> Any:
        return self._sampling_params(
            n=1, temperature=self.temperature, top_p=self.top_p, max_tokens=int(max_tokens), seed=int(seed),
            logprobs=max(1, self.top_k_capture), stop_token_ids=sorted(self.eos_ids), ignore_eos=True,
            detokenize=False)

    def generate(self, requests: list[GenRequest], step_hook: StepHook | None = None) -> list[GenResult]:
        """Generate one response per request (results in request order); see the module docstring."""
        stats = {"chunks": 0, "generated_tokens": 0, "submitted_tokens": 0, "prefix_cached_tokens": 0,
                 "recomputes": 0, "weight_loads": 0}
        started = time.time()
        if not requests:
            self.last_stats = {**{k: float(v) for k, v in stats.items()}, "seconds": 0.0}
            return []
        if len({r.sample_id for r in requests}) != len(requests):
            raise ValueError("sample_id values in one generate() call must be unique")
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"sample {r.sample_id}: empty prompt")
        seqs = [SeqState(r) for r in requests]
        by_id = {s.request.sample_id: s for s in seqs}
        chunk = self.sync_chunk_tokens if step_hook is not None else self.max_new_tokens
        n_chunk = 0
        while True:
            live = [s for s in seqs if s.live]
            if not live:
                break
            budgets = [chunk_budget(len(s.response), self.max_new_tokens, chunk) for s in live]
            prompts = [{"prompt_token_ids": s.next_prompt()} for s in live]
            params = [self._params(b, request_seed(self.seed, s.request.sample_id, n_chunk))
                      for s, b in zip(live, budgets)]
            stats["submitted_tokens"] += sum(len(p["prompt_token_ids"]) for p in prompts)
            outs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
            now, version = time.time(), self.version
            for s, b, out in zip(live, budgets, outs):
                comp = out.outputs[0]
                stats["generated_tokens"] += absorb_chunk(
                    s, comp.token_ids, comp.logprobs, getattr(comp, "finish_reason", None), b, version=version,
                    eos_ids=self.eos_ids, max_new_tokens=self.max_new_tokens, top_k=self.top_k_capture, now=now)
                stats["prefix_cached_tokens"] += int(getattr(out, "num_cached_tokens", 0) or 0)
            n_chunk += 1
            stats["chunks"] += 1
            if step_hook is None or not any(s.live for s in seqs):
                continue
            update, evict = step_hook()
            now = time.time()
            for sid in evict or ():
                if sid in by_id:
                    by_id[sid].finish("aborted", "aborted", "evict", now)
            if update is not None:
                if update.pause_mode not in ("keep", "recompute", "abort"):
                    raise ValueError(f"unknown pause_mode {update.pause_mode!r}")
                load_weights_into_llm(self.llm, update.state_dict, self.vllm_version)
                self.version = int(update.version)
                stats["weight_loads"] += 1
                if update.pause_mode == "abort":
                    for s in seqs:
                        s.finish("aborted", "aborted", "sync_abort", now)
                elif any(s.live for s in seqs):
                    stats["recomputes"] += 1  # keep == recompute here (module docstring)
        self.last_stats = {**{k: float(v) for k, v in stats.items()}, "seconds": time.time() - started}
        return [s.to_result(started, self.top_k_capture) for s in seqs]
