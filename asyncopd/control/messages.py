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

from dataclasses import MISSING, dataclass, field, fields
from typing import Literal, Mapping, Optional, TypeVar, Union

PauseMode = Literal["keep", "abort", "recompute"]
Spans = tuple[tuple[int, int], ...]
_T = TypeVar("_T")


def frozen_record(cls: type[_T]) -> type[_T]:
    """``dataclass(frozen=True, slots=True)``, built faster. The ``__init__`` a frozen
    dataclass gets calls ``object.__setattr__`` once per field (to get past the frozen
    ``__setattr__``); this one sets each slot through its member descriptor: the same
    instance (same fields, equality, hash, repr, immutability), in about half the time. The
    simulator builds an event and an action per sample (~5% of a 64-GPU bench run). A class
    with a ``default_factory``, keyword-only or non-init field, or ``__post_init__`` keeps
    the dataclass's own ``__init__``."""
    cls = dataclass(frozen=True, slots=True)(cls)
    fs = fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or any(f.default_factory is not MISSING or f.kw_only or not f.init for f in fs):
        return cls
    scope: dict = {}
    params, body = [], []
    for i, f in enumerate(fs):
        scope[f"_set_{i}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            scope[f"_default_{i}"] = f.default
            params.append(f"{f.name}=_default_{i}")
        body.append(f"    _set_{i}(self, {f.name})\n")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "".join(body), scope)
    scope["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = scope["__init__"]  # type: ignore[misc]
    return cls


def role_of(worker: str) -> str:
    """``"rollout-3"`` → ``"rollout"``."""
    return worker.rsplit("-", 1)[0]


# ----------------------------------------------------------------------------- events
@frozen_record
class RunStarted:
    t: float = 0.0


@frozen_record
class PromptsAvailable:
    t: float
    count: int | None  # None: the source is unbounded


@frozen_record
class GenerationFinished:
    t: float
    sample_id: int
    worker: str
    started_at: float
    spans: Spans
    prompt_tokens: int
    ended_at: float | None = None  # when its last token was sampled, if before delivery ``t``
    wave_cpu_s: float | None = None  # the worker's CPU seconds on the wave it came in (real runs on CPU)
    cpu_s: float | None = None  # continuous batching: its share of the worker's CPU seconds (real runs on CPU)

    @property
    def response_tokens(self) -> int:
        return sum(n for _, n in self.spans)


@frozen_record
class GenerationAborted:
    t: float
    sample_id: int
    worker: str
    started_at: float
    tokens_done: int
    reason: str  # "sync_abort" | "evict" | "worker_failed" | ...
    ended_at: float | None = None


@frozen_record
class ScoringFinished:
    t: float
    batch_id: int
    worker: str
    started_at: float
    cpu_s: Optional[float] = None  # the worker's CPU time on the batch (real runs; None: not measured)


@frozen_record
class TrainStepFinished:
    t: float
    step: int
    started_at: float
    metrics: Mapping[str, float] = field(default_factory=dict)


@frozen_record
class WeightSyncFinished:
    t: float
    worker: str
    version: int
    started_at: float
    paused_s: float | None = None  # of [started_at, t], how long generation was stopped (None: unknown)


@frozen_record
class WorkerFailed:
    """``worker`` died. Its in-flight work is re-queued. ``restarting``: the driver is bringing it
    back (a ``WorkerRestarted`` follows, or a second ``WorkerFailed`` without ``restarting`` if the
    restart fails); until then the run waits for it rather than stopping for want of workers."""

    t: float
    worker: str
    error: str = ""
    restarting: bool = False


@frozen_record
class WorkerRestarted:
    """A failed worker is back, as a fresh process. A rollout worker holds the weights of
    ``version`` (a fresh process loads the run's initial student: version 0); the controller
    syncs it to the newest version before it generates anything."""

    t: float
    worker: str
    version: int = 0


@frozen_record
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
@frozen_record
class Generate:
    sample_id: int
    prompt_id: int
    worker: str
    slot: int


@frozen_record
class AbortGeneration:
    worker: str
    sample_ids: tuple[int, ...]
    reason: str


@frozen_record
class Score:
    batch_id: int
    sample_ids: tuple[int, ...]
    worker: str


@frozen_record
class Train:
    step: int
    sample_ids: tuple[int, ...]


@frozen_record
class SyncWeights:
    worker: str
    version: int
    pause_mode: PauseMode


@frozen_record
class Stop:
    ok: bool
    reason: str


Action = Union[Generate, AbortGeneration, Score, Train, SyncWeights, Stop]
