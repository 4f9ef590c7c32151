"""One entry point for every OPD estimator: ``per_token_loss(student_logp, batch, algo)``.

``TokenBatch`` holds a micro-batch as padded tensors (built from ``TrainItem`` by the torch
learner): the response positions, the rollout's capture and the teacher-score cache entries.
``per_token_loss`` dispatches on ``algo.loss`` (the names of ``asyncopd.config.algorithm``)
to the module that holds that estimator's math, and returns the per-position loss ``[B, T]``
plus token-level diagnostics. The learner reduces it with the whole-batch token mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from asyncopd.losses.dense import kl_per_token_from_logprobs
from asyncopd.losses.forward_kl_topk import forward_kl_topk_per_token
from asyncopd.losses.mc_forward_kl import mc_forward_kl_per_token
from asyncopd.losses.mc_reverse_kl import mc_reverse_kl_per_token
from asyncopd.losses.reverse_kl_student_topk import reverse_kl_student_topk_per_token
from asyncopd.losses.reverse_kl_topk import reverse_kl_topk_per_token
from asyncopd.losses.sampled_reverse_kl import sampled_reverse_kl_per_token


@dataclass
class TokenBatch:
    """A micro-batch, ``B`` samples padded to ``T`` response positions (``valid`` marks real ones)."""

    valid: torch.Tensor  # bool [B, T]
    targets: torch.Tensor  # long [B, T]: the emitted tokens y_t
    behaviour_logp: torch.Tensor  # [B, T]: log mu(y_t)
    teacher_topk_ids: torch.Tensor  # long [B, T, k]
    teacher_topk_logp: torch.Tensor  # [B, T, k], -inf where padded
    teacher_sampled_logp: torch.Tensor  # [B, T]: log p_T(y_t)
    query_ids: Optional[torch.Tensor] = None  # long [B, T, Q]: rollout top-K or MC draws
    query_valid: Optional[torch.Tensor] = None  # bool [B, T, Q]
    query_teacher_logp: Optional[torch.Tensor] = None  # [B, T, Q]: log p_T at query_ids
    query_behaviour_logp: Optional[torch.Tensor] = None  # [B, T, Q]: log mu at query_ids
    teacher_draw_ids: Optional[torch.Tensor] = None  # long [B, T, M]: ids drawn from p_T
    teacher_draw_valid: Optional[torch.Tensor] = None  # bool [B, T, M]
    teacher_draw_logp: Optional[torch.Tensor] = None  # [B, T, M]
    teacher_full_logp: Optional[torch.Tensor] = None  # [B, T, V]

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})


def _need(x: Optional[torch.Tensor], what: str, loss: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"loss {loss} needs {what} in the batch, but the samples carry none "
                         "(was the rollout / teacher asked to produce it?)")
    return x


def per_token_loss(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-position loss ``[B, T]`` of ``algo.loss`` from the student's log-probs ``[B, T, V]``
    (``log_softmax`` of the learner's logits, gradients flowing) and the batch.

    Diagnostics (``[B, T]``, to be token-averaged): ``kept`` (PG estimators: share of ids neither
    dropped nor masked by the stabiliser) and ``ratio`` (mean importance ratio at the ids)."""
    loss = algo.loss
    diag: dict[str, torch.Tensor] = {}
    if loss == "forward_kl_topk":
        per = forward_kl_topk_per_token(student_logp.gather(-1, b.teacher_topk_ids), b.teacher_topk_logp)
    elif loss == "reverse_kl_topk":
        per = reverse_kl_topk_per_token(student_logp.gather(-1, b.teacher_topk_ids), b.teacher_topk_logp,
                                        tail=algo.topk_tail)
    elif loss == "reverse_kl_student_topk":
        ids = _need(b.query_ids, "the rollout's top-K ids", loss)
        per = reverse_kl_student_topk_per_token(student_logp.gather(-1, ids),
                                                _need(b.query_teacher_logp, "teacher log-probs at them", loss),
                                                b.query_valid, tail=algo.topk_tail)
    elif loss in ("sampled_reverse_kl", "mc_reverse_kl"):
        opts = dict(advantage=algo.advantage, stabiliser=algo.stabiliser, clip_eps=algo.clip_eps,
                    weight_cap=algo.behaviour_weight_cap, m2po_budget=algo.m2po_budget)
        if loss == "sampled_reverse_kl":
            lt = student_logp.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)
            per, ids_diag = sampled_reverse_kl_per_token(lt, b.behaviour_logp, b.teacher_sampled_logp, b.valid, **opts)
        else:
            ids = _need(b.query_ids, "the rollout's MC draws", loss)
            valid = _need(b.query_valid, "their mask", loss) & b.valid.unsqueeze(-1)
            per, ids_diag = mc_reverse_kl_per_token(
                student_logp.gather(-1, ids), _need(b.query_behaviour_logp, "log mu at the draws", loss),
                _need(b.query_teacher_logp, "teacher log-probs at the draws", loss), valid, **opts)
        diag = {k: v.mean(-1) for k, v in ids_diag.items()}
    elif loss == "mc_forward_kl":
        ids = _need(b.teacher_draw_ids, "the teacher's draws", loss)
        per = mc_forward_kl_per_token(student_logp.gather(-1, ids),
                                      _need(b.teacher_draw_logp, "their log-probs", loss),
                                      _need(b.teacher_draw_valid, "their mask", loss))
    elif loss == "dense_forward_kl":
        per = kl_per_token_from_logprobs(_need(b.teacher_full_logp, "the full teacher distribution", loss), student_logp)
    elif loss == "dense_reverse_kl":
        per = kl_per_token_from_logprobs(student_logp, _need(b.teacher_full_logp, "the full teacher distribution", loss))
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return per, diag
