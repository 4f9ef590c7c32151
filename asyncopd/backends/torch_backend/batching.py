"""Pack ``TrainItem``s into the learner's padded tensors.

Rows are ``prompt + response`` right-padded to the longest (``input_ids``, ``attention_mask``);
``positions[b, t]`` is the absolute position of the logits that predict response token ``t``
(``P_b + t - 1``). The per-position data (teacher-score cache, rollout capture) is padded to
``T = max response length`` and to the widest ``k`` / ``Q`` / ``M`` in the micro-batch, with
``valid`` masks; padded teacher log-probs are ``-inf`` so that they contribute nothing.
Which optional parts are packed follows the estimator's needs (``EstimatorSpec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from asyncopd.backends.base import TrainItem
from asyncopd.losses.batch import TokenBatch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # long [B, L]
    attention_mask: torch.Tensor  # long [B, L]
    positions: torch.Tensor  # long [B, T]
    tokens: TokenBatch


def _pad(rows: list[Optional[np.ndarray]], t_max: int, fill: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_b, W_b]`` arrays into ``[B, t_max, max W]`` with ``fill``; return (values, valid)."""
    width = max((r.shape[1] for r in rows if r is not None and r.ndim == 2), default=0)
    out = torch.full((len(rows), t_max, width), fill, dtype=dtype)
    valid = torch.zeros((len(rows), t_max, width), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r is None or r.size == 0:
            continue
        t, w = r.shape
        out[b, :t, :w] = torch.from_numpy(np.array(r)).to(dtype)  # (a copy: arrays from Ray are read-only)
        valid[b, :t, :w] = True
    return out, valid


def _require(x: Any, what: str, item: TrainItem, index: int) -> Any:
    if x is None:
        raise ValueError(f"train item {index} (sample {item.teacher.sample_id}) has no {what}; the loss needs it")
    return x


def pack(items: list[TrainItem], spec: Any) -> PackedBatch:
    """``spec``: the loss's ``EstimatorSpec`` (what to pack beyond the top-k cache)."""
    seqs = [list(it.prompt_ids) + list(it.response_ids) for it in items]
    width = max(len(s) for s in seqs)
    b = len(items)
    ids = torch.zeros((b, width), dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        attn[r, : len(s)] = 1
    t_max = max(len(it.response_ids) for it in items)
    pos = torch.zeros((b, t_max), dtype=torch.long)
    valid = torch.zeros((b, t_max), dtype=torch.bool)
    targets = torch.zeros((b, t_max), dtype=torch.long)
    behaviour = torch.zeros((b, t_max), dtype=torch.float32)
    t_sampled = torch.zeros((b, t_max), dtype=torch.float32)
    for r, it in enumerate(items):
        p, t = len(it.prompt_ids), len(it.response_ids)
        if t == 0:
            continue
        pos[r, :t] = torch.arange(p - 1, p - 1 + t)
        valid[r, :t] = True
        targets[r, :t] = torch.as_tensor(list(it.response_ids), dtype=torch.long)
        if len(it.behaviour_logprobs) == t:
            behaviour[r, :t] = torch.as_tensor(list(it.behaviour_logprobs), dtype=torch.float32)
        if it.teacher.sampled_logprob.shape[0] == t:
            t_sampled[r, :t] = torch.from_numpy(it.teacher.sampled_logprob.astype(np.float32))
    top_ids, _ = _pad([it.teacher.topk_ids for it in items], t_max, 0, torch.long)
    top_lp, _ = _pad([it.teacher.topk_logprobs for it in items], t_max, float("-inf"), torch.float32)
    tb = TokenBatch(valid=valid, targets=targets, behaviour_logp=behaviour, teacher_topk_ids=top_ids,
                    teacher_topk_logp=top_lp, teacher_sampled_logp=t_sampled)
    if spec.teacher_query is not None:
        kind = "top-K" if spec.teacher_query == "rollout_topk" else "MC draws"
        caps = [_require(it.capture, f"rollout capture ({kind})", it, i) for i, it in enumerate(items)]
        q_ids = [c.topk_ids if spec.teacher_query == "rollout_topk" else c.mc_ids for c in caps]
        q_mu = [c.topk_logprobs if spec.teacher_query == "rollout_topk" else c.mc_logprobs for c in caps]
        q_t = [_require(it.teacher.query_logprobs, "teacher log-probs at the queried ids", it, i)
               for i, it in enumerate(items)]
        tb.query_ids, tb.query_valid = _pad(q_ids, t_max, 0, torch.long)
        tb.query_behaviour_logp, _ = _pad(q_mu, t_max, 0.0, torch.float32)
        tb.query_teacher_logp, _ = _pad(q_t, t_max, float("-inf"), torch.float32)
    if spec.teacher_samples:
        d_ids = [_require(it.teacher.sample_ids, "teacher draws", it, i) for i, it in enumerate(items)]
        tb.teacher_draw_ids, tb.teacher_draw_valid = _pad(d_ids, t_max, 0, torch.long)
        tb.teacher_draw_logp, _ = _pad([it.teacher.sample_logprobs for it in items], t_max, 0.0, torch.float32)
    if spec.teacher_full:
        full = [_require(it.teacher.full_logprobs, "full teacher distribution", it, i) for i, it in enumerate(items)]
        tb.teacher_full_logp, _ = _pad(full, t_max, 0.0, torch.float32)
    return PackedBatch(ids, attn, pos, tb)
