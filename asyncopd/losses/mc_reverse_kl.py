r"""Multi-sample Monte-Carlo reverse KL.

At each response position the rollout draws ``M`` ids from the behaviour distribution ``mu_t``
— column 0 is the emitted token ``y_t``, columns ``1..M-1`` independent extra draws from the
*same* distribution (temperature and top-p applied exactly as for ``y_t``; see
``torch_backend/sampling.py``) — and records ``log mu_t`` at them. The teacher scores those ids
(``ScoreRequest.query_ids``). The loss averages the policy-gradient term of
:mod:`asyncopd.losses.sampled_reverse_kl` over the ``M`` ids::

    l_t = (1/M) sum_j  - sg(r(z_j)) * pi_theta(z_j) / mu_t(z_j)

Each column is a draw from ``mu_t``, so the expected gradient is the same as with one sample
(``grad KL(pi_theta || p_T)`` at the position, with the online reward) and the variance drops
roughly as ``1/M``: the estimator stays correctable under staleness.
"""

from __future__ import annotations

from typing import Any

import torch

from asyncopd.losses.batch import TokenBatch, need
from asyncopd.losses.sampled_reverse_kl import pg_options, pg_reverse_kl_per_token


def mc_reverse_kl_per_token(logp_theta_at_draws: torch.Tensor, behaviour_logprobs_at_draws: torch.Tensor,
                            teacher_logprobs_at_draws: torch.Tensor, valid: torch.Tensor,
                            **options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Inputs ``[..., M]`` (log pi_theta, log mu, log p_T at the draws; ``valid`` bool); output ``[...]``."""
    return pg_reverse_kl_per_token(logp_theta_at_draws, behaviour_logprobs_at_draws, teacher_logprobs_at_draws,
                                   valid, **options)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mc_reverse_kl`` for ``per_token_loss``: the rollout's M draws from mu."""
    loss = "mc_reverse_kl"
    ids = need(b.query_ids, "the rollout's MC draws", loss)
    valid = need(b.query_valid, "their mask", loss) & b.valid.unsqueeze(-1)
    per, ids_diag = mc_reverse_kl_per_token(
        student_logp.gather(-1, ids), need(b.query_behaviour_logp, "log mu at the draws", loss),
        need(b.query_teacher_logp, "teacher log-probs at the draws", loss), valid, **pg_options(algo))
    return per, {k: v.mean(-1) for k, v in ids_diag.items()}
