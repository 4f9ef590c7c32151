"""One entry point for every OPD estimator: ``per_token_loss(student_logp, batch, algo)``.

``per_token_loss`` looks ``algo.loss`` up in the catalogue (``asyncopd/catalog/estimators.py``),
whose entry names the function that holds that estimator's math (``estimate`` in
``asyncopd/losses/<name>.py`` unless the entry says otherwise), and returns its per-position
loss ``[B, T]`` plus token-level diagnostics. The learner reduces it with the whole-batch
token mean. Every estimator function has the signature of ``per_token_loss``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Callable

import torch

from asyncopd.catalog.estimators import ESTIMATORS
from asyncopd.losses.batch import TokenBatch

Estimate = Callable[[torch.Tensor, TokenBatch, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@cache
def estimator(name: str) -> Estimate:
    """The function of the catalogue's estimator ``name`` (``module:function`` under ``asyncopd.losses``)."""
    spec = ESTIMATORS.get(name)
    if spec is None:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(ESTIMATORS)}")
    module, function = spec.implementation.split(":")
    return getattr(importlib.import_module(f"asyncopd.losses.{module}"), function)


def per_token_loss(student_logp: torch.Tensor, b: TokenBatch, algo: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-position loss ``[B, T]`` of ``algo.loss`` from the student's log-probs ``[B, T, V]``
    (``log_softmax`` of the learner's logits, gradients flowing) and the batch.

    Diagnostics (``[B, T]``, to be token-averaged): ``kept`` (PG estimators: share of ids neither
    dropped nor masked by the stabiliser) and ``ratio`` (mean importance ratio at the ids)."""
    return estimator(algo.loss)(student_logp, b, algo)
