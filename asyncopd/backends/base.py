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


def check_sampling_args(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The rollout engines' shared argument checks (one-line ValueErrors naming the argument)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@dataclass
class GenRequest:
    sample_id: int
    prompt_id: int
    prompt_ids: list[int]


@dataclass
class RolloutCapture:
    """What the rollout records at each response position ``t`` besides the sampled token,
    all under the sampling distribution ``mu_t`` the token was drawn from (temperature and
    top-p applied: see ``torch_backend/sampling.py``):

    - ``topk_ids[t]`` / ``topk_logprobs[t]``: the ``K`` most likely ids under ``mu_t`` and
      ``log mu_t`` at them (descending; ``-inf`` outside the nucleus) — the support ``S_mu(t)``;
    - ``mc_ids[t]`` / ``mc_logprobs[t]``: ``M`` ids drawn from ``mu_t``, column 0 being the
      emitted token ``y_t`` and columns ``1..M-1`` independent extra draws, with ``log mu_t``.

    Arrays are ``[T, K]`` / ``[T, M]`` (int32 ids, float32 log-probs); an unused part is None.
    """

    topk_ids: Optional[np.ndarray] = None
    topk_logprobs: Optional[np.ndarray] = None
    mc_ids: Optional[np.ndarray] = None
    mc_logprobs: Optional[np.ndarray] = None

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (self.topk_ids, self.topk_logprobs, self.mc_ids, self.mc_logprobs)
                   if a is not None)


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
    capture: Optional[RolloutCapture] = None  # student top-K / MC draws, when the loss needs them
    wave_cpu_s: Optional[float] = None  # the worker's CPU seconds on the whole call that returned it (shared
    # by that call's results; set by the rollout actor on CPU devices, None where not measured)
    cpu_s: Optional[float] = None  # continuous batching: this sample's share of the worker's CPU seconds
    # (an answer's CPU split evenly over its finished results; set on CPU devices)

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
class ScoreRequest:
    """One sample for the teacher: score ``prompt_ids + response_ids`` and, when given, return
    ``log p_T`` at ``query_ids[t]`` (``[T, Q]``: the student's top-K or its MC draws)."""

    sample_id: int
    prompt_ids: list[int]
    response_ids: list[int]
    query_ids: Optional[np.ndarray] = None


@dataclass
class TeacherPayload:
    """The finite teacher-score cache entry for one sample, per response position t:

    - ``topk_ids[t]`` / ``topk_logprobs[t]``: the teacher's top-k ids and log p_T at them
      (descending);
    - ``sampled_logprob[t]``: log p_T(y_t) of the token the student emitted;
    - ``query_ids[t]`` / ``query_logprobs[t]``: log p_T at the ids the learner asked for
      (``ScoreRequest.query_ids``), ``[T, Q]``;
    - ``sample_ids[t]`` / ``sample_logprobs[t]``: ``M`` ids drawn from p_T (temperature 1, no
      truncation) and log p_T at them, ``[T, M]``;
    - ``full_logprobs[t]``: log p_T over the whole vocabulary, ``[T, V]`` — the dense reference
      only (an "infinite cache"; practical for small vocabularies).

    Computed once per sample and reused however stale the sample gets; ``nbytes`` is what it
    costs to keep and ship.
    """

    sample_id: int
    topk_ids: np.ndarray  # int32 [T, k]
    topk_logprobs: np.ndarray  # float32 [T, k]
    sampled_logprob: np.ndarray  # float32 [T]
    query_ids: Optional[np.ndarray] = None  # int32 [T, Q]
    query_logprobs: Optional[np.ndarray] = None  # float32 [T, Q]
    sample_ids: Optional[np.ndarray] = None  # int32 [T, M]
    sample_logprobs: Optional[np.ndarray] = None  # float32 [T, M]
    full_logprobs: Optional[np.ndarray] = None  # float32 [T, V]

    @property
    def nbytes(self) -> int:
        arrays = (self.topk_ids, self.topk_logprobs, self.sampled_logprob, self.query_ids, self.query_logprobs,
                  self.sample_ids, self.sample_logprobs, self.full_logprobs)
        return sum(int(a.nbytes) for a in arrays if a is not None)


@dataclass
class TrainItem:
    prompt_ids: list[int]
    response_ids: list[int]
    behaviour_logprobs: list[float]
    token_versions: list[int]
    teacher: TeacherPayload
    capture: Optional[RolloutCapture] = None


@dataclass
class TrainMetrics:
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "grad_norm": self.grad_norm, "lr": self.lr, "tokens": float(self.tokens), **self.extra}


class RequestSource(Protocol):
    """Where a continuous-batching engine (``RolloutEngine.serve``) takes its requests from."""

    def take(self, most: int, wait: bool) -> list[GenRequest] | None:
        """Up to ``most`` queued requests (``[]`` if none); with ``wait``, block until one is
        queued first. ``None`` once closed with nothing queued."""


class RequestList:
    """A ``RequestSource`` over a fixed list, closed once it is empty (a wave, or a stream
    served alone)."""

    def __init__(self, requests: list[GenRequest]) -> None:
        self.requests = list(requests)

    def take(self, most: int, wait: bool) -> list[GenRequest] | None:
        if not self.requests:
            return None
        out, self.requests = self.requests[:most], self.requests[most:]
        return out


class RolloutEngine(Protocol):
    version: int

    def set_weights(self, update: WeightUpdate) -> None:
        """Load weights now (the engine is idle)."""

    def generate(self, requests: list[GenRequest], step_hook: StepHook | None = None) -> list[GenResult]:
        """Generate one response per request, batched; return when all are finished or aborted."""


class TeacherScorer(Protocol):
    def score(self, items: list[ScoreRequest]) -> list[TeacherPayload]:
        """One prefill over prompt+response per item; payloads in the order of ``items``."""


class Learner(Protocol):
    version: int

    def train_step(self, batch: list[TrainItem]) -> TrainMetrics:
        """One optimizer update on the whole batch; increments ``version``."""

    def weights_for_sync(self) -> dict[str, Any]:
        """A CPU copy of the current weights, safe to ship while training continues."""
