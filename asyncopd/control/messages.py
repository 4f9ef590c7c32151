"""Events (driver → controller) and actions (controller → driver).

This module is the seam between the pure scheduling controller and its two drivers (the
SimPy simulator and the Ray trainer). Every event carries ``t``, the driver's clock in
seconds since the run started (simulated or wall-clock); the controller never reads a clock.

A ``spans`` value lists, in generation order, ``(version, n_tokens)`` runs: the weight
version that sampled each stretch of the response. A response generated entirely under
version 3 has ``spans == ((3, n),)``; one that kept generating across a sync to version 4
has ``((3, a), (4, b))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional, Union

PauseMode = Literal["keep", "abort", "recompute"]
Spans = tuple[tuple[int, int], ...]


def role_of(worker: str) -> str:
    """``"rollout-3"`` → ``"rollout"``."""
    return worker.rsplit("-", 1)[0]


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class RunStarted:
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class PromptsAvailable:
    t: float
    count: int | None  # None: the source is unbounded


@dataclass(frozen=True, slots=True)
class GenerationFinished:
    t: float
    sample_id: int
    worker: str
    started_at: float
    spans: Spans
    prompt_tokens: int
    ended_at: float | None = None  # when its last token was sampled, if before delivery ``t``
    wave_cpu_s: float | None = None  # the worker's CPU seconds on the wave it came in (real runs on CPU)

    @property
    def response_tokens(self) -> int:
        return sum(n for _, n in self.spans)


@dataclass(frozen=True, slots=True)
class GenerationAborted:
    t: float
    sample_id: int
    worker: str
    started_at: float
    tokens_done: int
    reason: str  # "sync_abort" | "evict" | "worker_failed" | ...
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class ScoringFinished:
    t: float
    batch_id: int
    worker: str
    started_at: float
    cpu_s: Optional[float] = None  # the worker's CPU time on the batch (real runs; None: not measured)


@dataclass(frozen=True, slots=True)
class TrainStepFinished:
    t: float
    step: int
    started_at: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WeightSyncFinished:
    t: float
    worker: str
    version: int
    started_at: float
    paused_s: float | None = None  # of [started_at, t], how long generation was stopped (None: unknown)


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """``worker`` died. Its in-flight work is re-queued. ``restarting``: the driver is bringing it
    back (a ``WorkerRestarted`` follows, or a second ``WorkerFailed`` without ``restarting`` if the
    restart fails); until then the run waits for it rather than stopping for want of workers."""

    t: float
    worker: str
    error: str = ""
    restarting: bool = False


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    """A failed worker is back, as a fresh process. A rollout worker holds the weights of
    ``version`` (a fresh process loads the run's initial student: version 0); the controller
    syncs it to the newest version before it generates anything."""

    t: float
    worker: str
    version: int = 0


@dataclass(frozen=True, slots=True)
class StopRequested:
    """End the run at the next update boundary (e.g. a wall-clock budget ran out): no new
    update starts; the one in flight, if any, finishes and is recorded; then ``Stop(ok=True)``."""

    t: float
    reason: str


Event = Union[
    RunStarted,
    PromptsAvailable,
    GenerationFinished,
    GenerationAborted,
    ScoringFinished,
    TrainStepFinished,
    WeightSyncFinished,
    WorkerFailed,
    WorkerRestarted,
    StopRequested,
]


# ---------------------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class Generate:
    sample_id: int
    prompt_id: int
    worker: str
    slot: int


@dataclass(frozen=True, slots=True)
class AbortGeneration:
    worker: str
    sample_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Score:
    batch_id: int
    sample_ids: tuple[int, ...]
    worker: str


@dataclass(frozen=True, slots=True)
class Train:
    step: int
    sample_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SyncWeights:
    worker: str
    version: int
    pause_mode: PauseMode


@dataclass(frozen=True, slots=True)
class Stop:
    ok: bool
    reason: str


Action = Union[Generate, AbortGeneration, Score, Train, SyncWeights, Stop]
