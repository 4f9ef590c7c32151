"""Distillation losses (torch). Importing this package imports torch.

One module per estimator, its math in the module docstring and its ``estimate`` function the
entry point (names as in ``asyncopd.catalog.estimators.ESTIMATORS``):

- :mod:`~asyncopd.losses.forward_kl_topk`: forward KL on the teacher's top-k (+ shared helpers);
- :mod:`~asyncopd.losses.reverse_kl_topk`: reverse KL on the teacher's top-k, truncated;
- :mod:`~asyncopd.losses.reverse_kl_student_topk`: reverse KL on the rollout student's top-K;
- :mod:`~asyncopd.losses.sampled_reverse_kl`: one-sample policy-gradient reverse KL, offline or
  online advantage, with the stabilisers of :mod:`~asyncopd.losses.stabilisers`;
- :mod:`~asyncopd.losses.mc_reverse_kl`: multi-sample Monte-Carlo reverse KL;
- :mod:`~asyncopd.losses.mc_forward_kl`: multi-sample forward KL on teacher draws;
- :mod:`~asyncopd.losses.dense`: exact full-vocabulary forward and reverse KL, the reference;
- :mod:`~asyncopd.losses.batch`: ``TokenBatch``, the padded micro-batch every estimator reads;
- :mod:`~asyncopd.losses.estimators`: ``per_token_loss``, the learner's entry point (looks the estimator up by name).
"""

from asyncopd.losses.dense import (
    dense_forward_kl,
    dense_forward_kl_per_token,
    dense_reverse_kl,
    dense_reverse_kl_per_token,
)
from asyncopd.losses.batch import TokenBatch
from asyncopd.losses.estimators import per_token_loss
from asyncopd.losses.forward_kl_topk import (
    forward_kl_topk,
    forward_kl_topk_per_token,
    gather_logprobs,
    masked_token_mean,
    topk_mass,
)
from asyncopd.losses.mc_forward_kl import mc_forward_kl_per_token
from asyncopd.losses.mc_reverse_kl import mc_reverse_kl_per_token
from asyncopd.losses.reverse_kl_student_topk import reverse_kl_student_topk_per_token
from asyncopd.losses.reverse_kl_topk import reverse_kl_on_support_per_token, reverse_kl_topk_per_token
from asyncopd.losses.sampled_reverse_kl import pg_reverse_kl_per_token, sampled_reverse_kl_per_token

__all__ = [
    "TokenBatch",
    "dense_forward_kl",
    "dense_forward_kl_per_token",
    "dense_reverse_kl",
    "dense_reverse_kl_per_token",
    "forward_kl_topk",
    "forward_kl_topk_per_token",
    "gather_logprobs",
    "masked_token_mean",
    "mc_forward_kl_per_token",
    "mc_reverse_kl_per_token",
    "per_token_loss",
    "pg_reverse_kl_per_token",
    "reverse_kl_on_support_per_token",
    "reverse_kl_student_topk_per_token",
    "reverse_kl_topk_per_token",
    "sampled_reverse_kl_per_token",
    "topk_mass",
]
