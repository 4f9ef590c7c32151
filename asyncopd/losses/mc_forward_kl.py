r"""Multi-sample forward KL: ``M`` ids drawn from the teacher.

The teacher draws ``z_1..z_M ~ p_T`` at each response position (temperature 1, no truncation)
and stores them with ``log p_T(z_j)`` in the cache. Per position::

    l_t(theta) = (1/M) sum_j [ log p_T(z_j) - log pi_theta(z_j) ]

``E[l_t] = KL(p_T || pi_theta)`` and ``E[grad l_t] = -E_{p_T}[grad log pi_theta] = grad KL(p_T || pi_theta)``:
unbiased in value and gradient, for any ``M`` (variance ~ 1/M). The draws come from the
teacher, not the student, so staleness only moves *where* (which positions) it is evaluated,
as for the top-k forward KL.
"""

from __future__ import annotations

from typing import Any

import torch

from asyncopd.losses.batch import TokenBatch, need


def mc_forward_kl_per_token(student_logprobs_at_draws: torch.Tensor, teacher_logprobs_at_draws: torch.Tensor,
                            valid: torch.Tensor) -> torch.Tensor:
    """Inputs ``[..., M]`` (log pi_theta and log p_T at the teacher's draws; ``valid`` bool); output ``[...]``."""
    valid = valid.bool()
    s = student_logprobs_at_draws
    t = teacher_logprobs_at_draws.to(s.dtype)
    terms = torch.where(valid, t - s, torch.zeros_like(s))
    return terms.sum(-1) / valid.sum(-1).clamp(min=1)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mc_forward_kl`` for ``per_token_loss``: M ids drawn from the teacher."""
    loss = "mc_forward_kl"
    ids = need(b.teacher_draw_ids, "the teacher's draws", loss)
    return mc_forward_kl_per_token(student_logp.gather(-1, ids), need(b.teacher_draw_logp, "their log-probs", loss),
                                   need(b.teacher_draw_valid, "their mask", loss)), {}
