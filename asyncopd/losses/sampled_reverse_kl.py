r"""Sampled reverse KL in policy-gradient form (one id per position, or several).

For ids ``z`` drawn from the behaviour policy ``mu`` (the student weights that generated the
sample, possibly stale), with ``log p_T(z)`` from the teacher-score cache::

    reward   r(z) = log p_T(z) - log mu(z)          (advantage = "offline")
             r(z) = log p_T(z) - log pi_theta(z)    (advantage = "online": recomputed under the
                                                     current student at learner time)
    loss     l(z) = - sg(r(z)) * rho(z),   rho(z) = pi_theta(z) / mu(z)

(optionally stabilised, :mod:`asyncopd.losses.stabilisers`), averaged over the ``M`` ids of a
position (``M = 1``: the emitted token ``y_t``; :mod:`asyncopd.losses.mc_reverse_kl` uses more).

Why it is *correctable*: ``E_{z~mu}[grad l(z)] = -sum_z pi_theta(z) r(z) grad log pi_theta(z)``.
With the online reward this is ``-E_pi[(log p_T - log pi) grad log pi] = grad KL(pi_theta || p_T)``
(``E_pi[grad log pi] = 0``) — exactly, for any ``mu`` with the same support: importance sampling
absorbs the staleness. With the offline reward the expectation is ``grad KL`` plus
``-E_pi[(log pi - log mu) grad log pi]``, a bias that vanishes only when ``mu = pi_theta``
(fresh samples). The value of ``l`` at ``rho = 1`` is ``log pi - log p_T`` (online): its
expectation under ``pi`` is the reverse KL.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from asyncopd.losses.batch import TokenBatch
from asyncopd.losses.stabilisers import decoupled_ppo_objective, m2po_objective, plain_objective, ppo_clip_objective

Advantage = Literal["online", "offline"]
Stabiliser = Literal["none", "clip", "decoupled_ppo", "m2po"]


def pg_reverse_kl_per_token(
    logp_theta: torch.Tensor,
    logp_mu: torch.Tensor,
    logp_teacher: torch.Tensor,
    valid: torch.Tensor,
    *,
    advantage: Advantage = "online",
    stabiliser: Stabiliser = "none",
    clip_eps: float = 0.2,
    weight_cap: float = 5.0,
    m2po_budget: float = 0.01,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-position loss ``[...]`` from per-id inputs ``[..., M]``: log pi_theta (with grad), log mu
    and log p_T at the ids, and ``valid`` (bool) marking real ids. Returns the loss (mean over
    the valid ids of a position; 0 where none) and per-id diagnostics ``kept`` (1 = not dropped
    or masked) and ``ratio``."""
    if advantage not in ("online", "offline"):
        raise ValueError(f"advantage must be online or offline, got {advantage!r}")
    valid = valid.bool()
    zero = torch.zeros_like(logp_theta)
    lt = torch.where(valid, logp_theta, zero)
    lm = torch.where(valid, logp_mu.to(lt.dtype), zero)
    lT = torch.where(valid, logp_teacher.to(lt.dtype), zero)
    adv = (lT - lt.detach()) if advantage == "online" else (lT - lm)
    kept = valid
    if stabiliser == "none":
        objective = plain_objective(lt, lm, adv)
    elif stabiliser == "clip":
        objective = ppo_clip_objective(lt, lm, adv, clip_eps)
    elif stabiliser == "decoupled_ppo":
        objective, keep = decoupled_ppo_objective(lt, lm, adv, clip_eps, weight_cap)
        kept = valid & keep
    elif stabiliser == "m2po":
        objective, keep = m2po_objective(lt, lm, adv, valid, m2po_budget)
        kept = valid & keep
    else:
        raise ValueError(f"unknown stabiliser {stabiliser!r}")
    per_id = torch.where(valid, -objective, zero)
    count = valid.sum(-1)
    per_token = per_id.sum(-1) / count.clamp(min=1)
    return per_token, {"kept": kept.to(lt.dtype), "ratio": torch.exp(lt - lm).detach()}


def sampled_reverse_kl_per_token(logp_theta_y: torch.Tensor, behaviour_logprob: torch.Tensor,
                                 teacher_logprob_y: torch.Tensor, valid: torch.Tensor,
                                 **options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One sample per position (the emitted token ``y_t``): inputs ``[...]``, output ``[...]``."""
    return pg_reverse_kl_per_token(logp_theta_y.unsqueeze(-1), behaviour_logprob.unsqueeze(-1),
                                   teacher_logprob_y.unsqueeze(-1), valid.unsqueeze(-1), **options)


def pg_options(algo: Any) -> dict[str, Any]:
    """The policy-gradient options of ``algo`` (advantage and stabiliser), as the PG losses take them."""
    return dict(advantage=algo.advantage, stabiliser=algo.stabiliser, clip_eps=algo.clip_eps,
                weight_cap=algo.behaviour_weight_cap, m2po_budget=algo.m2po_budget)


def estimate(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``sampled_reverse_kl`` for ``per_token_loss``: the emitted token is the one sample."""
    lt = student_logp.gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)
    per, ids_diag = sampled_reverse_kl_per_token(lt, b.behaviour_logp, b.teacher_sampled_logp, b.valid,
                                                 **pg_options(algo))
    return per, {k: v.mean(-1) for k, v in ids_diag.items()}
