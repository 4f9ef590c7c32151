r"""Reverse KL from the student to the teacher, evaluated on a finite support.

Per response position ``t`` with a support ``S(t)`` of ids at which the teacher's log-prob is
known (``S_T(t)``, the teacher's own top-k from the cache, for ``reverse_kl_topk``)::

    l_t(theta) = sum_{v in S(t)} pi_theta(v) * ( log pi_theta(v) - log p_T(v) )

Choice: **truncated, not renormalised** — neither ``pi_theta`` nor ``p_T`` is renormalised over
``S(t)``. Consequences:

- with ``S(t)`` the whole vocabulary, ``l_t`` is exactly ``KL(pi_theta || p_T)`` (value and
  gradient: the tests check both against the dense reference);
- with a smaller support, the terms outside ``S(t)`` are dropped, so ``l_t`` can be negative
  (the student's mass outside the support is not charged) — the estimator is biased, with low
  variance, and the bias does not shrink with more samples;
- its gradient in the student logits ``z`` is ``sum_{v in S} pi(v) (log pi(v) - log p_T(v) + 1)
  (e_v - pi)``: every id of the support pulls, weighted by the *current* student, so the
  support is where a stale sample matters (it is the teacher's top-k at positions the old
  student visited).

Support entries marked invalid (ragged ``k``, padding) contribute 0.
"""

from __future__ import annotations

import torch


def reverse_kl_on_support_per_token(
    student_logprobs_at_support: torch.Tensor,
    teacher_logprobs_at_support: torch.Tensor,
    support_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``l_t`` per position: inputs ``[..., S]`` (log pi_theta and log p_T at the support ids),
    output ``[...]``. ``support_valid`` (bool ``[..., S]``) defaults to "teacher log-prob finite"."""
    s = student_logprobs_at_support
    t = teacher_logprobs_at_support.to(s.dtype)
    valid = torch.isfinite(t) if support_valid is None else support_valid.bool() & torch.isfinite(t)
    t_safe = torch.where(valid, t, torch.zeros_like(t))
    s_safe = torch.where(valid, s, torch.zeros_like(s))
    terms = s_safe.exp() * (s_safe - t_safe)
    return torch.where(valid, terms, torch.zeros_like(terms)).sum(-1)


def reverse_kl_topk_per_token(student_logprobs_at_topk: torch.Tensor,
                              teacher_topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Reverse KL on the teacher's top-k ``S_T(t)``: ``[..., k]`` -> ``[...]``."""
    return reverse_kl_on_support_per_token(student_logprobs_at_topk, teacher_topk_logprobs)
