r"""Async-RL stabilisers for the policy-gradient KL estimators (per sampled id ``z``).

Notation: ``A = sg(reward)`` the advantage, ``rho = pi_theta(z) / mu(z)`` the importance ratio
of the current student to the behaviour policy, ``eps`` the clip width. Each function returns
the per-id **objective** ``J`` to *maximise* (the loss is ``-J``) and a mask of the ids kept.

- ``none``:  ``J = rho * A``. Unbiased for the sampled support: ``E_mu[rho A grad log pi] =
  E_pi[A grad log pi]``.
- ``clip`` (PPO): ``J = min(rho A, clip(rho, 1-eps, 1+eps) A)``: no gradient once the ratio has
  moved past the trust region in the direction the advantage pushes.
- ``decoupled_ppo`` (AReaL): a proximal policy ``pi_prox`` (the learner's weights at the start
  of the update, no gradient) splits the ratio into a behaviour weight ``w = sg(pi_prox/mu)``
  and ``r = pi_theta / pi_prox``; ``J = w * min(r A, clip(r, 1-eps, 1+eps) A)``, and ids with
  ``w > cap`` are dropped. Here one batch is one optimizer update, so ``pi_prox`` equals
  ``pi_theta`` in value (``r = 1``, ``grad r = grad log pi_theta``): the clip never binds inside
  the update and the stabiliser acts through ``w`` and the cap.
- ``m2po`` (second-moment trust region): with ``delta = log mu - log pi_theta`` and the
  "harmful" ids ``H = {A > 0 and rho > 1} or {A < 0 and rho < 1}``, choose per micro-batch
  the largest ``tau^2`` such that ``mean_{z in H} min(delta^2, tau^2) <= budget`` and mask the
  ids of ``H`` with ``delta^2 > tau^2``; ``J = rho A`` on the rest. When the unclipped second
  moment is already within the budget nothing is masked.
"""

from __future__ import annotations

import torch


def plain_objective(logp_theta: torch.Tensor, logp_mu: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return torch.exp(logp_theta - logp_mu) * adv


def ppo_clip_objective(logp_theta: torch.Tensor, logp_mu: torch.Tensor, adv: torch.Tensor,
                       eps: float) -> torch.Tensor:
    ratio = torch.exp(logp_theta - logp_mu)
    return torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)


def decoupled_ppo_objective(logp_theta: torch.Tensor, logp_mu: torch.Tensor, adv: torch.Tensor, eps: float,
                            cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    logp_prox = logp_theta.detach()
    weight = torch.exp(logp_prox - logp_mu)
    keep = weight <= cap
    r = torch.exp(logp_theta - logp_prox)
    j = weight * torch.minimum(r * adv, r.clamp(1 - eps, 1 + eps) * adv)
    return torch.where(keep, j, torch.zeros_like(j)), keep


def m2po_threshold(delta_sq: torch.Tensor, budget: float) -> float:
    """Largest ``x`` with ``mean(min(delta_sq, x)) <= budget`` (``inf`` when no clipping is
    needed). ``f(x) = (sum_{d <= x} d + x * #{d > x}) / n`` is continuous and increasing, so on
    the segment between consecutive sorted values it is linear and solved in closed form."""
    n = delta_sq.numel()
    if n == 0:
        return float("inf")
    d, _ = torch.sort(delta_sq.double())  # (all in float64: a float32 mean can land either side of the budget)
    below = torch.cat([d.new_zeros(1), torch.cumsum(d, 0)])  # below[m] = sum of the m smallest
    if float(below[n]) / n <= budget:
        return float("inf")
    for m in range(n):  # x in [d[m-1], d[m]]: f(x) = (below[m] + x (n - m)) / n
        x = (n * budget - float(below[m])) / (n - m)
        if x <= float(d[m]):  # the first segment that reaches the budget (f increases)
            return max(x, 0.0)
    return float(d[n - 1])  # (rounding: the budget is the mean to the last bit; clip nothing)


def m2po_objective(logp_theta: torch.Tensor, logp_mu: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor,
                   budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = torch.exp(logp_theta - logp_mu)
    with torch.no_grad():
        delta_sq = (logp_mu - logp_theta).pow(2)
        harmful = valid & (((adv > 0) & (ratio > 1)) | ((adv < 0) & (ratio < 1)))
        tau_sq = m2po_threshold(delta_sq[harmful], budget)
        keep = ~(harmful & (delta_sq > tau_sq))
    j = ratio * adv
    return torch.where(keep, j, torch.zeros_like(j)), keep
