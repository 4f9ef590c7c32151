"""The rollout / teacher / learner backend interface.

Every backend (the torch/transformers backend for CPU and GPU; the vLLM backend for GPU
rollout and teacher scoring) exchanges these plain dataclasses, so the Ray actors in
``asyncopd/runtime`` do not care which one runs. Token ids are Python lists (small, cheap to
pickle through Ray); teacher payloads are numpy arrays.

Weight versions: a rollout engine holds weights of some version; every sampled token is
tagged with the version that sampled it (``token_versions``). A weight update may arrive
*between decode steps* of a running batch; what happens to the sequences in flight is the
pause mode:

- ``keep``: continue with the new weights and the existing KV cache (mixed-version sample);
- ``recompute``: continue with the new weights after re-prefilling the KV cache of every
  in-flight sequence (prompt + tokens generated so far) under the new weights;
- ``abort``: drop every in-flight sequence (reported with ``status == "aborted"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Protocol

import numpy as np


@dataclass
class GenRequest:
    sample_id: int
    prompt_id: int
    prompt_ids: list[int]


@dataclass
class GenResult:
    sample_id: int
    prompt_id: int
    prompt_ids: list[int]
    response_ids: list[int]  # includes the EOS token when the model emitted one
    behaviour_logprobs: list[float]  # log mu(y_t) under the distribution y_t was sampled from
    token_versions: list[int]  # weight version that sampled each response token
    started_at: float  # time.time() when the sequence entered the running batch
    finished_at: float  # time.time() when its last token was sampled (or it was aborted)
    status: Literal["finished", "aborted"] = "finished"
    abort_reason: str = ""
    finish_reason: Literal["eos", "length", "aborted"] = "eos"

    def spans(self) -> tuple[tuple[int, int], ...]:
        """Run-length encoding of ``token_versions``: ((version, n_tokens), ...)."""
        out: list[list[int]] = []
        for v in self.token_versions:
            if out and out[-1][0] == v:
                out[-1][1] += 1
            else:
                out.append([v, 1])
        return tuple((v, n) for v, n in out)


@dataclass
class WeightUpdate:
    """A new set of student weights, delivered to a rollout engine between decode steps."""

    version: int
    state_dict: Mapping[str, Any]  # name -> tensor (CPU), as produced by Learner.weights_for_sync
    pause_mode: Literal["keep", "abort", "recompute"] = "keep"


# Called by the engine between decode steps. Returns a pending WeightUpdate (or None) and
# the set of sample ids to abort now (evictions). The engine applies the update before the
# next decode step.
StepHook = Callable[[], tuple[Optional[WeightUpdate], set[int]]]


@dataclass
class TeacherPayload:
    """The finite teacher-score cache entry for one sample, per response position t:
    ``topk_ids[t]`` / ``topk_logprobs[t]``: the teacher's top-k ids and log p_T at them
    (descending); ``sampled_logprob[t]``: log p_T(y_t) of the token the student emitted."""

    sample_id: int
    topk_ids: np.ndarray  # int32 [T, k]
    topk_logprobs: np.ndarray  # float32 [T, k]
    sampled_logprob: np.ndarray  # float32 [T]

    @property
    def nbytes(self) -> int:
        return int(self.topk_ids.nbytes + self.topk_logprobs.nbytes + self.sampled_logprob.nbytes)


@dataclass
class TrainItem:
    prompt_ids: list[int]
    response_ids: list[int]
    behaviour_logprobs: list[float]
    token_versions: list[int]
    teacher: TeacherPayload


@dataclass
class TrainMetrics:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr, "tokens": float(self.tokens), **self.extra}


class RolloutEngine(Protocol):
    version: int

    def set_weights(self, update: WeightUpdate) -> None:
        """Load weights now (the engine is idle)."""

    def generate(self, requests: list[GenRequest], step_hook: StepHook | None = None) -> list[GenResult]:
        """Generate one response per request, batched; return when all are finished or aborted."""


class TeacherScorer(Protocol):
    def score(self, items: list[tuple[int, list[int], list[int]]]) -> list[TeacherPayload]:
        """One prefill over prompt+response per item ``(sample_id, prompt_ids, response_ids)``."""


class Learner(Protocol):
    version: int

    def train_step(self, batch: list[TrainItem]) -> TrainMetrics:
        """One optimizer update on the whole batch; increments ``version``."""

    def weights_for_sync(self) -> dict[str, Any]:
        """A CPU copy of the current weights, safe to ship while training continues."""
