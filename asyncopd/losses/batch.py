"""``TokenBatch``: a micro-batch as padded tensors, what every estimator reads.

Built from ``TrainItem`` by the torch learner (``backends/torch_backend/batching.py``): the
response positions, the rollout's capture and the teacher-score cache entries. Which optional
parts are present follows the estimator's needs (``asyncopd.catalog.estimators``); ``need``
names a missing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TokenBatch:
    """A micro-batch, ``B`` samples padded to ``T`` response positions (``valid`` marks real ones)."""

    valid: torch.Tensor  # bool [B, T]
    targets: torch.Tensor  # long [B, T]: the emitted tokens y_t
    behaviour_logp: torch.Tensor  # [B, T]: log mu(y_t)
    teacher_topk_ids: torch.Tensor  # long [B, T, k]
    teacher_topk_logp: torch.Tensor  # [B, T, k], -inf where padded
    teacher_sampled_logp: torch.Tensor  # [B, T]: log p_T(y_t)
    query_ids: Optional[torch.Tensor] = None  # long [B, T, Q]: rollout top-K or MC draws
    query_valid: Optional[torch.Tensor] = None  # bool [B, T, Q]
    query_teacher_logp: Optional[torch.Tensor] = None  # [B, T, Q]: log p_T at query_ids
    query_behaviour_logp: Optional[torch.Tensor] = None  # [B, T, Q]: log mu at query_ids
    teacher_draw_ids: Optional[torch.Tensor] = None  # long [B, T, M]: ids drawn from p_T
    teacher_draw_valid: Optional[torch.Tensor] = None  # bool [B, T, M]
    teacher_draw_logp: Optional[torch.Tensor] = None  # [B, T, M]
    teacher_full_logp: Optional[torch.Tensor] = None  # [B, T, V]

    def to(self, device: torch.device) -> "TokenBatch":
        return TokenBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})


def need(x: Optional[torch.Tensor], what: str, loss: str) -> torch.Tensor:
    if x is None:
        raise ValueError(f"loss {loss} needs {what} in the batch, but the samples carry none "
                         "(was the rollout / teacher asked to produce it?)")
    return x
