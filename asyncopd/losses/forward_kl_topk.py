r"""Forward KL from the teacher to the student, evaluated on the teacher's top-k ids.

Notation (per response position ``t``): ``p_T`` the teacher distribution, ``pi_theta`` the student
being trained, ``S_T(t)`` the ``k`` ids with the largest teacher probability (the teacher-score
cache stores ``S_T(t)`` and ``log p_T`` there).

Per-position term::

    l_t(theta) = sum_{v in S_T(t)} p_T(v) * ( log p_T(v) - log pi_theta(v) )

Choice: the teacher probabilities are used as they are, **not renormalised** over ``S_T(t)``.
Consequences:

- with ``k`` equal to the vocabulary size, ``l_t`` is exactly ``KL(p_T || pi_theta)``;
- with a smaller ``k``, ``l_t`` is that same sum restricted to ``S_T(t)``: the tail
  ``sum_{v not in S_T} p_T(v) (log p_T(v) - log pi_theta(v))`` is dropped. Its weights are the
  teacher's own mass outside the top-k, ``1 - sum_{v in S_T} p_T(v)``, so the truncation error
  shrinks as that mass does. The truncated sum can be negative (the student may put more mass
  than the teacher on ``S_T``); its gradient in the student logits ``z`` is
  ``m_t * softmax(z) - p_T 1[S_T]`` with ``m_t = sum_{v in S_T} p_T(v)``, i.e. the exact
  forward-KL gradient with the tail of the target removed;
- the weights ``p_T`` come from the cache and do not depend on the student, so a stale sample only
  changes the positions at which the loss is evaluated, never its weighting.

Reduction: token mean over the valid response positions of the whole batch,
``L = sum_{b,t} mask[b,t] * l_{b,t} / sum_{b,t} mask[b,t]``. For gradient accumulation pass
``normalizer`` = the token count of the whole batch, so the micro-batch losses add up to ``L``.

Teacher log-probs of ``-inf`` (``p_T = 0``, e.g. padding of ragged ``k``) contribute 0.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from asyncopd.losses.batch import TokenBatch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32/float64 unchanged (log-softmax needs the precision)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` (at least float32, over the last dim) at ``ids``.

    ``logits``: ``[..., V]``; ``ids``: ``[..., k]`` (same leading shape, int64) or ``[...]`` (one id
    per position). Returns ``[..., k]`` or ``[...]`` respectively. Differentiable in ``logits``.
    """
    logp = torch.log_softmax(upcast(logits), dim=-1)
    if ids.dim() == logits.dim() - 1:
        return logp.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    return logp.gather(-1, ids.long())


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, normalizer: Optional[float | torch.Tensor] = None) -> torch.Tensor:
    """``sum(values over mask) / normalizer`` (default: the number of valid positions, at least 1).

    Masked-out positions are excluded with ``where`` (not multiplied by 0), so ``nan``/``inf`` at
    padding never leaks into the result or its gradient.
    """
    valid = mask.bool()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    if normalizer is None:
        normalizer = valid.sum().clamp(min=1)
    return total / normalizer


def forward_kl_topk_per_token(student_logprobs_at_topk: torch.Tensor, teacher_topk_logprobs: torch.Tensor) -> torch.Tensor:
    """``l_t`` for every position: inputs ``[..., k]`` (log pi_theta and log p_T at ``S_T``), output ``[...]``."""
    t_logp = teacher_topk_logprobs.to(student_logprobs_at_topk.dtype)
    present = torch.isfinite(t_logp)
    t_safe = torch.where(present, t_logp, torch.zeros_like(t_logp))
    p_t = torch.where(present, t_safe.exp(), torch.zeros_like(t_safe))
    terms = p_t * (t_safe - student_logprobs_at_topk)
    return torch.where(present, terms, torch.zeros_like(terms)).sum(-1)


def forward_kl_topk(
    student_logprobs_at_topk: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalizer: Optional[float | torch.Tensor] = None,
) -> torch.Tensor:
    """Token-mean forward KL on the teacher's top-k (module docstring), a scalar.

    Args:
        student_logprobs_at_topk: ``[B, T, k]`` student log-probs at the teacher's top-k ids
            (e.g. from :func:`gather_logprobs`); gradients flow through it.
        teacher_topk_logprobs: ``[B, T, k]`` teacher log-probs at those ids (constants).
        mask: ``[B, T]``, true/1 at valid response positions.
        normalizer: divide the masked sum by this instead of the number of valid positions.
    """
    per_token = forward_kl_topk_per_token(student_logprobs_at_topk, teacher_topk_logprobs)
    return masked_token_mean(per_token, mask, normalizer)


def topk_mass(logprobs_at_topk: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean of ``sum_{v in S_T} exp(logprob(v))``: with teacher log-probs, the mass the
    cache covers (1 - dropped tail); with student log-probs, the student's mass on ``S_T``."""
    lp = upcast(logprobs_at_topk)
    mass = torch.where(torch.isfinite(lp), lp.exp(), torch.zeros_like(lp)).sum(-1)
    return masked_token_mean(mass, mask)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward_kl_topk`` for ``per_token_loss``: the student's log-probs at the teacher's top-k."""
    return forward_kl_topk_per_token(student_logp.gather(-1, b.teacher_topk_ids), b.teacher_topk_logp), {}
