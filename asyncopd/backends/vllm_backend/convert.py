"""Pure conversions from vLLM's output objects to this project's arrays (no vllm, no torch).

vLLM reports log-probabilities as, per position, a ``dict[token_id, Logprob]`` where ``Logprob``
has ``.logprob`` (float) and ``.rank`` (1-based rank in the distribution, or None). Two places:

- ``CompletionOutput.logprobs`` (``SamplingParams(logprobs=K)``): one dict per *generated*
  token ``y_t``, holding the ``K`` most likely ids **plus** ``y_t`` (so ``K`` or ``K + 1``
  entries, OpenAI convention);
- ``RequestOutput.prompt_logprobs`` (``SamplingParams(prompt_logprobs=k)``): one entry per
  *prompt* position ``j``, ``None`` at ``j = 0`` (nothing predicts the first token), else a dict
  with the ``k`` most likely ids for position ``j`` given ``x_<j`` **plus** the actual ``x_j``.

The functions here turn those into the fixed-shape arrays of ``RolloutCapture`` /
``TeacherPayload``: top-k sorted by log-prob descending (ties: lower rank, then lower id), exactly
``k`` columns (the actual token, when it is an extra ``k+1``-th entry, is dropped from the top-k
but still read for ``sampled_logprob`` / ``behaviour_logprobs``). The objects only need
``.logprob`` (and optionally ``.rank``), so tests use tiny fakes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from asyncopd.backends.base import TeacherPayload

INSTALL_HINT = (
    "the vLLM backend needs the 'vllm' package: pip install 'asyncopd[vllm]' on a CUDA machine "
    "(this backend is written against vLLM's public API but has not been run in this project's CI)"
)


def vllm_available() -> bool:
    """Whether ``vllm`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def require_vllm() -> Any:
    """Import and return the ``vllm`` module, or raise ``ImportError`` with the install hint."""
    try:
        return importlib.import_module("vllm")
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e


def vllm_version(vllm: Any) -> str:
    return str(getattr(vllm, "__version__", "unknown"))


def supports_logprobs_mode(engine_args_cls: Any) -> bool:
    """Whether vLLM's ``EngineArgs`` has the ``logprobs_mode`` field (``processed_logprobs``:
    log-probs after temperature / top-k / top-p, i.e. of the distribution actually sampled from)."""
    if engine_args_cls is None:
        return False
    if dataclasses.is_dataclass(engine_args_cls):
        return any(f.name == "logprobs_mode" for f in dataclasses.fields(engine_args_cls))
    return hasattr(engine_args_cls, "logprobs_mode")


def request_seed(seed: int, sample_id: int, chunk: int) -> int:
    """A per-request seed for ``SamplingParams(seed=...)``: deterministic in (engine seed,
    sample id, chunk index) and different across them, so two samples of one prompt (or two
    chunks of one sample) never replay the same random stream. In ``[0, 2**31 - 1)``."""
    h = hashlib.blake2b(f"{int(seed)}:{int(sample_id)}:{int(chunk)}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") % (2**31 - 1)


def _logprob(entry: Any) -> float:
    return float(entry.logprob if hasattr(entry, "logprob") else entry)


def _rank(entry: Any) -> float:
    r = getattr(entry, "rank", None)
    return float(r) if r is not None else float("inf")


def topk_from_logprob_dict(d: Mapping[int, Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of one position's ``{id: Logprob}``, descending: ``(ids int32 [k],
    logprobs float32 [k])``. Raises ``ValueError`` if the dict has fewer than ``k`` entries."""
    if len(d) < k:
        raise ValueError(f"vLLM returned {len(d)} log-probs at a position, fewer than the k={k} asked for "
                         "(is k larger than the vocabulary, or max_logprobs too small?)")
    items = sorted(((int(i), _logprob(e), _rank(e)) for i, e in d.items()), key=lambda x: (-x[1], x[2], x[0]))[:k]
    ids = np.fromiter((i for i, _, _ in items), dtype=np.int32, count=k)
    lps = np.fromiter((lp for _, lp, _ in items), dtype=np.float32, count=k)
    return ids, lps


def token_logprob(d: Optional[Mapping[int, Any]], token: int, where: str) -> float:
    """``d[token].logprob``; vLLM always includes the actual token, so a miss is an error."""
    if d is None or int(token) not in d:
        raise ValueError(f"vLLM returned no log-prob for token {int(token)} at {where}")
    return _logprob(d[int(token)])


def sample_logprobs_to_arrays(
    token_ids: Sequence[int], logprobs: Optional[Sequence[Optional[Mapping[int, Any]]]], top_k: int
) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """Generated tokens + ``CompletionOutput.logprobs`` -> ``(behaviour [T] float32,
    topk_ids [T, K] int32 | None, topk_logprobs [T, K] float32 | None)``; top-k only when
    ``top_k > 0``. ``behaviour[t] = log mu_t(y_t)`` (what mu is depends on vLLM's logprobs_mode,
    see ``rollout.py``)."""
    n = len(token_ids)
    if n and (logprobs is None or len(logprobs) != n):
        got = None if logprobs is None else len(logprobs)
        raise ValueError(f"vLLM returned log-probs for {got} of {n} generated tokens (SamplingParams.logprobs unset?)")
    behaviour = np.empty(n, dtype=np.float32)
    topk_ids = np.empty((n, top_k), dtype=np.int32) if top_k > 0 else None
    topk_lps = np.empty((n, top_k), dtype=np.float32) if top_k > 0 else None
    for t in range(n):
        d = logprobs[t]  # type: ignore[index]
        behaviour[t] = token_logprob(d, token_ids[t], f"generated position {t}")
        if top_k > 0:
            topk_ids[t], topk_lps[t] = topk_from_logprob_dict(d, top_k)  # type: ignore[index,arg-type]
    return behaviour, topk_ids, topk_lps


def empty_payload(sample_id: int, top_k: int) -> TeacherPayload:
    return TeacherPayload(
        sample_id=int(sample_id),
        topk_ids=np.zeros((0, top_k), dtype=np.int32),
        topk_logprobs=np.zeros((0, top_k), dtype=np.float32),
        sampled_logprob=np.zeros((0,), dtype=np.float32),
    )


def prompt_logprobs_to_payload(
    sample_id: int,
    prompt_len: int,
    response_ids: Sequence[int],
    prompt_logprobs: Optional[Sequence[Optional[Mapping[int, Any]]]],
    top_k: int,
) -> TeacherPayload:
    """``RequestOutput.prompt_logprobs`` of ``x = prompt + response`` -> the teacher payload.

    Response token ``t`` sits at position ``j = prompt_len + t`` of ``x``; ``prompt_logprobs[j]``
    is ``log p_T(. | x_<j)`` at its top-k ids plus ``x_j``. So ``topk_*[t]`` are its ``top_k``
    largest entries (descending) and ``sampled_logprob[t] = prompt_logprobs[j][x_j]``. ``T = 0``
    gives empty ``[0, k]`` / ``[0]`` arrays, as the torch scorer does.
    """
    T = len(response_ids)
    if T == 0:
        return empty_payload(sample_id, top_k)
    if prompt_len < 1:
        raise ValueError(f"sample {sample_id}: empty prompt (the first response token needs a context)")
    need = prompt_len + T
    if prompt_logprobs is None or len(prompt_logprobs) < need:
        got = None if prompt_logprobs is None else len(prompt_logprobs)
        raise ValueError(f"sample {sample_id}: vLLM returned prompt_logprobs for {got} positions, need {need}")
    ids = np.empty((T, top_k), dtype=np.int32)
    lps = np.empty((T, top_k), dtype=np.float32)
    sampled = np.empty(T, dtype=np.float32)
    for t in range(T):
        d = prompt_logprobs[prompt_len + t]
        if d is None:
            raise ValueError(f"sample {sample_id}: no prompt_logprobs at position {prompt_len + t}")
        ids[t], lps[t] = topk_from_logprob_dict(d, top_k)
        sampled[t] = token_logprob(d, response_ids[t], f"sample {sample_id}, response position {t}")
    return TeacherPayload(sample_id=int(sample_id), topk_ids=ids, topk_logprobs=lps, sampled_logprob=sampled)
