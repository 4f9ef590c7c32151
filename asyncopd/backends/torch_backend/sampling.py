"""The sampling distribution of the rollout engine, shared by everything that must agree on it.

For next-token logits ``z`` (one row per sequence), temperature ``tau`` and nucleus mass ``p``:

1. tempered distribution ``q(v) = softmax(z / tau)(v)``;
2. nucleus ``N``: sort the vocabulary by ``q`` descending (stable sort, so ties keep id order) and
   keep the shortest prefix whose cumulative mass reaches ``p``; a token is kept iff the mass of
   the tokens strictly before it in that order is ``< p`` (so the most likely token is always kept);
3. sampling distribution ``mu(v) = q(v) / sum_{u in N} q(u)`` for ``v in N``, else 0.

:func:`sampling_logprobs` returns ``log mu`` (``-inf`` outside the nucleus). With ``tau = 1`` and
``p = 1`` it is exactly ``log_softmax(z)``. ``tau = 0`` means greedy decoding: ``mu`` is the point
mass on the arg-max (log-prob 0 there), which is the limit of the tempered distribution.

Anything that needs extra draws "from the distribution the token was sampled from" (Monte-Carlo
estimators) should call this function with the engine's temperature and top-p.
"""

from __future__ import annotations

import torch


def sampling_logprobs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """``log mu`` over the last dimension of ``logits`` (any leading shape), in float32."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    z = logits.float()
    if temperature == 0:
        out = torch.full_like(z, float("-inf"))
        return out.scatter_(-1, z.argmax(dim=-1, keepdim=True), 0.0)
    if temperature != 1.0:
        z = z / temperature
    logq = torch.log_softmax(z, dim=-1)
    if top_p >= 1.0:
        return logq
    sorted_logq, order = torch.sort(logq, dim=-1, descending=True, stable=True)
    sorted_q = sorted_logq.exp()
    mass_before = torch.cumsum(sorted_q, dim=-1) - sorted_q
    drop_sorted = mass_before >= top_p
    drop_sorted[..., 0] = False  # the most likely token always survives
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    truncated = logq.masked_fill(drop, float("-inf"))
    return truncated - torch.logsumexp(truncated, dim=-1, keepdim=True)


def sample_from_logprobs(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``logp`` ([batch, vocab]); returns ids of shape [batch]."""
    probs = logp.exp()
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
