"""Distillation losses (torch). Importing this package imports torch.

- :mod:`asyncopd.losses.forward_kl_topk`: forward KL on the teacher's cached top-k ids, the
  learner's training loss, plus the shared helpers (gather student log-probs, masked token mean).
- :mod:`asyncopd.losses.dense`: exact full-vocabulary forward and reverse KL, the reference the
  finite-cache estimators are compared against.
"""

from asyncopd.losses.dense import (
    dense_forward_kl,
    dense_forward_kl_per_token,
    dense_reverse_kl,
    dense_reverse_kl_per_token,
)
from asyncopd.losses.forward_kl_topk import (
    forward_kl_topk,
    forward_kl_topk_per_token,
    gather_logprobs,
    masked_token_mean,
    topk_mass,
)

__all__ = [
    "dense_forward_kl",
    "dense_forward_kl_per_token",
    "dense_reverse_kl",
    "dense_reverse_kl_per_token",
    "forward_kl_topk",
    "forward_kl_topk_per_token",
    "gather_logprobs",
    "masked_token_mean",
    "topk_mass",
]
