r"""Reverse KL on the rollout student's top-K support.

At generation time the rollout records ``S_mu(t)``, the ``K`` most likely ids of the sampling
distribution ``mu_t`` (the behaviour policy, possibly stale); the teacher is asked for
``log p_T`` at exactly those ids (``ScoreRequest.query_ids``). Per position::

    l_t(theta) = sum_{v in S_mu(t)} pi_theta(v) * ( log pi_theta(v) - log p_T(v) )

plus, by default, the tail bucket ``pi_tail (log pi_tail - log p_tail)`` for the mass outside
``S_mu(t)`` (``algorithm.topk_tail``; see :mod:`asyncopd.losses.reverse_kl_topk`, which also
explains why the truncated ``drop`` form collapses); equal to ``KL(pi_theta || p_T)`` when ``K``
is the vocabulary size. The support is where the *old*
student put its mass, not where the current one does: when ``pi_theta`` has moved, mass it
now puts outside ``S_mu`` is never charged, and no importance weight can correct that (the
support is not a sample). This is the estimator the paper contrasts with the correctable
sampled ones.
"""

from __future__ import annotations

from typing import Any

import torch

from asyncopd.losses.batch import TokenBatch, need
from asyncopd.losses.reverse_kl_topk import TailMode, reverse_kl_on_support_per_token


def reverse_kl_student_topk_per_token(
    student_logprobs_at_support: torch.Tensor,
    teacher_logprobs_at_support: torch.Tensor,
    support_valid: torch.Tensor | None = None,
    tail: TailMode = "bucket",
) -> torch.Tensor:
    """Inputs ``[..., K]``: log pi_theta and log p_T at the rollout's top-K ids; output ``[...]``."""
    return reverse_kl_on_support_per_token(student_logprobs_at_support, teacher_logprobs_at_support, support_valid,
                                           tail=tail)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``reverse_kl_student_topk`` for ``per_token_loss``: the support is the rollout's top-K."""
    loss = "reverse_kl_student_topk"
    ids = need(b.query_ids, "the rollout's top-K ids", loss)
    per = reverse_kl_student_topk_per_token(student_logp.gather(-1, ids),
                                            need(b.query_teacher_logp, "teacher log-probs at them", loss),
                                            b.query_valid, tail=algo.topk_tail)
    return per, {}
