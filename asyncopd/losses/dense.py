r"""Full-vocabulary KL divergences: the "infinite teacher cache" reference.

For student logits ``z_s`` and teacher logits ``z_T`` at a position (``pi = softmax(z_s)``,
``p_T = softmax(z_T)``, sums over the whole vocabulary ``V``)::

    forward  KL(p_T || pi) = sum_v p_T(v) (log p_T(v) - log pi(v))
    reverse  KL(pi || p_T) = sum_v pi(v)  (log pi(v)  - log p_T(v))

Both are >= 0 and are computed in (at least) float32 from the logits (``log_softmax``), with the convention
``0 * log 0 = 0`` for tokens of zero probability. The batch reductions are the same token mean
over valid response positions as the top-k estimator (:func:`masked_token_mean`), so the two
are directly comparable: with ``k = |V|`` the top-k forward KL equals :func:`dense_forward_kl`.
These need full teacher logits (``[B, T, V]``), so they are only practical for small vocabularies.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from asyncopd.losses.batch import TokenBatch, need
from asyncopd.losses.forward_kl_topk import masked_token_mean, upcast


def kl_per_token_from_logprobs(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """``sum_v a(v) (log a(v) - log b(v))`` over the last dim, with ``0 log 0 = 0``."""
    present = torch.isfinite(logp_a)
    a_safe = torch.where(present, logp_a, torch.zeros_like(logp_a))
    terms = a_safe.exp() * (a_safe - logp_b)
    return torch.where(present, terms, torch.zeros_like(terms)).sum(-1)


def dense_forward_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_T || pi)`` per position: logits ``[..., V]`` -> ``[...]``."""
    logp_s = torch.log_softmax(upcast(student_logits), dim=-1)
    logp_t = torch.log_softmax(upcast(teacher_logits), dim=-1)
    return kl_per_token_from_logprobs(logp_t, logp_s)


def dense_reverse_kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``KL(pi || p_T)`` per position: logits ``[..., V]`` -> ``[...]``."""
    logp_s = torch.log_softmax(upcast(student_logits), dim=-1)
    logp_t = torch.log_softmax(upcast(teacher_logits), dim=-1)
    return kl_per_token_from_logprobs(logp_s, logp_t)


def dense_forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalizer: Optional[float | torch.Tensor] = None,
) -> torch.Tensor:
    """Token-mean ``KL(p_T || pi)`` over valid positions; logits ``[B, T, V]``, mask ``[B, T]``."""
    return masked_token_mean(dense_forward_kl_per_token(student_logits, teacher_logits), mask, normalizer)


def dense_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalizer: Optional[float | torch.Tensor] = None,
) -> torch.Tensor:
    """Token-mean ``KL(pi || p_T)`` over valid positions; logits ``[B, T, V]``, mask ``[B, T]``."""
    return masked_token_mean(dense_reverse_kl_per_token(student_logits, teacher_logits), mask, normalizer)


def estimate_forward(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``dense_forward_kl`` for ``per_token_loss``: KL(p_T || pi) over the full vocabulary."""
    teacher = need(b.teacher_full_logp, "the full teacher distribution", "dense_forward_kl")
    return kl_per_token_from_logprobs(teacher, student_logp), {}


def estimate_reverse(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``dense_reverse_kl`` for ``per_token_loss``: KL(pi || p_T) over the full vocabulary."""
    teacher = need(b.teacher_full_logp, "the full teacher distribution", "dense_reverse_kl")
    return kl_per_token_from_logprobs(student_logp, teacher), {}
