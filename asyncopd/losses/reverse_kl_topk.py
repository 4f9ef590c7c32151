r"""Reverse KL from the student to the teacher, evaluated on a finite support.

Per response position ``t`` with a support ``S(t)`` of ids at which the teacher's log-prob is
known (``S_T(t)``, the teacher's own top-k from the cache, for ``reverse_kl_topk``), two
choices for the mass outside the support (``algorithm.topk_tail``):

``bucket`` (default) — the support plus one "tail" outcome holding the rest of the mass::

    l_t = sum_{v in S} pi(v) (log pi(v) - log p_T(v))  +  pi_tail (log pi_tail - log p_tail)
    pi_tail = 1 - sum_{v in S} pi(v),    p_tail = 1 - sum_{v in S} p_T(v)

  the exact KL between the two distributions coarsened to ``S + {tail}``: always >= 0, zero iff
  the student matches the teacher on ``S`` and on the tail's total. With ``S`` the whole
  vocabulary the tail is empty and ``l_t = KL(pi || p_T)`` (value and gradient; tested). Where
  the teacher's tail is below float32 round-off (``p_tail <= 1e-6``, a support that covers
  the whole distribution) the tail term is left out.

``drop`` — **truncated, not renormalised**: only the sum over ``S``. Its minimum is not the
  teacher: each term ``pi(v)(log pi(v) - log p_T(v))`` is smallest at ``pi(v) = p_T(v)/e``, so
  the optimum pushes ``1 - m/e`` of the student's mass (``m = p_T(S)``) *outside* the support,
  where it is never charged. On the built-in task this collapses the student (measured: 0%
  held-out accuracy after 227 updates, from 12.5%). Kept to reproduce that failure.

The gradient pulls every id of the support, weighted by the *current* student, so the support
is where a stale sample matters (the teacher's top-k at positions the old student visited).
Support entries marked invalid (ragged ``k``, padding) contribute nothing.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from asyncopd.losses.batch import TokenBatch

TailMode = Literal["bucket", "drop"]
TAIL_EPS = 1e-6  # a teacher tail below this is float32 round-off of a full support


def reverse_kl_on_support_per_token(
    student_logprobs_at_support: torch.Tensor,
    teacher_logprobs_at_support: torch.Tensor,
    support_valid: torch.Tensor | None = None,
    tail: TailMode = "bucket",
) -> torch.Tensor:
    """``l_t`` per position: inputs ``[..., S]`` (log pi_theta and log p_T at the support ids),
    output ``[...]``. ``support_valid`` (bool ``[..., S]``) defaults to "teacher log-prob finite"."""
    if tail not in ("bucket", "drop"):
        raise ValueError(f"tail must be 'bucket' or 'drop', got {tail!r}")
    s = student_logprobs_at_support
    t = teacher_logprobs_at_support.to(s.dtype)
    valid = torch.isfinite(t) if support_valid is None else support_valid.bool() & torch.isfinite(t)
    zero = torch.zeros_like(t)
    t_safe = torch.where(valid, t, zero)
    s_safe = torch.where(valid, s, zero)
    pi = torch.where(valid, s_safe.exp(), zero)
    terms = torch.where(valid, pi * (s_safe - t_safe), zero)
    per = terms.sum(-1)
    if tail == "drop":
        return per
    p_tail = (1 - torch.where(valid, t_safe.exp(), zero).sum(-1)).clamp(min=0)
    pi_tail = (1 - pi.sum(-1)).clamp(min=1e-12)
    has_tail = p_tail > TAIL_EPS
    tail_term = pi_tail * (pi_tail.log() - p_tail.clamp(min=TAIL_EPS).log())
    return per + torch.where(has_tail, tail_term, torch.zeros_like(tail_term))


def reverse_kl_topk_per_token(student_logprobs_at_topk: torch.Tensor, teacher_topk_logprobs: torch.Tensor,
                              tail: TailMode = "bucket") -> torch.Tensor:
    """Reverse KL on the teacher's top-k ``S_T(t)``: ``[..., k]`` -> ``[...]``."""
    return reverse_kl_on_support_per_token(student_logprobs_at_topk, teacher_topk_logprobs, tail=tail)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``reverse_kl_topk`` for ``per_token_loss`` (``algo.topk_tail`` chooses the tail rule)."""
    return reverse_kl_topk_per_token(student_logp.gather(-1, b.teacher_topk_ids), b.teacher_topk_logp,
                                     tail=algo.topk_tail), {}
