"""The controller's bookkeeping: sample attempts and worker states.

A *prompt* is admitted once and may be attempted several times: an attempt aborted by a
weight sync (pause mode ``abort``) or a worker failure is re-queued as a new attempt of the
same prompt (same batch under batched policies). Every attempt ends in exactly one terminal
state: ``consumed``, ``evicted``, ``aborted`` (re-queued) or ``unfinished`` (in flight when
the run stopped).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from asyncopd.control.messages import Spans
from asyncopd.control.staleness import SpanTotals, Staleness, merged_with_totals, staleness_of

# Attempt states, in lifecycle order.
GENERATING = "generating"
GENERATED = "generated"  # waiting for the teacher
SCORING = "scoring"
READY = "ready"  # scored, waiting for the learner
CONSUMED = "consumed"
EVICTED = "evicted"
ABORTED = "aborted"
UNFINISHED = "unfinished"
TERMINAL = frozenset({CONSUMED, EVICTED, ABORTED, UNFINISHED})


@dataclass(slots=True)
class Attempt:
    sample_id: int
    prompt_id: int
    attempt: int
    batch: int | None
    worker: str
    slot: int
    issue_version: int  # the version the worker held when the controller issued Generate
    issued_at: float
    status: str = GENERATING
    started_at: float | None = None
    finished_at: float | None = None
    delivered_at: float | None = None  # when its result reached the controller (>= finished_at)
    spans: Spans = ()
    prompt_tokens: int = 0
    score_worker: str | None = None
    score_started_at: float | None = None
    ready_at: float | None = None
    consumed_step: int | None = None
    consumed_at: float | None = None
    staleness: Staleness | None = None
    exceeded_cap: bool = False
    doomed: bool = False  # certain to exceed a hard cap: evict as soon as it surfaces
    end_reason: str | None = None

    response_tokens: int = 0  # sum of the spans' token counts (set with the spans)
    start_version: int = -1  # oldest version among its tokens (issue-time version until spans are set)
    totals: SpanTotals = (0, None, None, 0)  # what its staleness depends on (staleness.merged_with_totals)

    def __post_init__(self) -> None:
        self.start_version = self.issue_version

    def set_spans(self, spans: Spans) -> None:
        """Record the generated tokens' versions (runs in generation order; kept merged)."""
        self.spans, self.totals = merged_with_totals(spans)
        self.response_tokens = self.totals[0]
        if self.totals[1] is not None:
            self.start_version = self.totals[1]

    def staleness_at(self, step: int) -> Staleness:
        return staleness_of(self.totals, step, self.start_version)

    def record(self) -> dict[str, Any]:
        """The ``samples.jsonl`` record (schema in docs/trace-format.md)."""
        st = self.staleness
        return {
            "sample_id": self.sample_id,
            "prompt_id": self.prompt_id,
            "attempt": self.attempt,
            "batch": self.batch,
            "status": self.status,
            "end_reason": self.end_reason,
            "worker": self.worker,
            "slot": self.slot,
            "issued_at": self.issued_at,
            "gen_start": self.started_at,
            "gen_end": self.finished_at,
            "gen_delivered": self.delivered_at,
            "prompt_tokens": self.prompt_tokens,
            "response_tokens": self.response_tokens,
            "version_spans": [list(s) for s in self.spans],
            "score_worker": self.score_worker,
            "score_start": self.score_started_at,
            "ready_at": self.ready_at,
            "consumed_step": self.consumed_step,
            "consumed_at": self.consumed_at,
            "staleness_mean": st.mean if st else None,
            "staleness_max": st.max if st else None,
            "staleness_min": st.min if st else None,
            "exceeded_cap": self.exceeded_cap,
        }


@dataclass(slots=True)
class RolloutWorkerState:
    name: str
    slots: int
    index: int = 0
    version: int = 0
    alive: bool = True
    restarting: bool = False  # failed, and the driver is bringing it back
    syncing_to: int | None = None
    running: dict[int, int] = field(default_factory=dict)  # slot -> sample_id
    _free: list[int] = field(default_factory=list)  # heap of free slots (all of them at first)

    def __post_init__(self) -> None:
        self._free = list(range(self.slots))

    def occupy(self, sample_id: int) -> int:
        """Put ``sample_id`` in the lowest free slot; return the slot."""
        slot = heapq.heappop(self._free)
        self.running[slot] = sample_id
        return slot

    def release(self, slot: int) -> None:
        del self.running[slot]
        heapq.heappush(self._free, slot)

    def release_all(self) -> None:
        self.running.clear()
        self._free = list(range(self.slots))

    @property
    def accepting(self) -> bool:
        return self.alive and self.syncing_to is None and len(self.running) < self.slots


class RolloutPool:
    """The rollout workers and which of them takes the next sample: the accepting worker
    with the most free slots; ties go to the worker whose slots changed most recently
    (usually the one that just finished a sequence and is admitting anyway).

    The controller offers a worker again (``push``) after every change of its slots or state
    while it accepts, and after every ``pop_best``, so a worker's latest offer is current
    whenever it accepts. The offers are kept in buckets by free slots, each in offer order
    (a dict: a new offer moves the worker to the end of its bucket): the best is the last
    worker of the fullest non-empty bucket. A worker found not accepting is dropped (it is
    offered again when it accepts)."""

    def __init__(self, slots: list[int], version: int) -> None:
        self.workers = {f"rollout-{i}": RolloutWorkerState(f"rollout-{i}", n, i, version=version)
                        for i, n in enumerate(slots)}
        self._buckets: list[dict[str, None]] = [{} for _ in range(max(slots) + 1)]  # free slots -> offers
        self._bucket_of: dict[str, int] = {}  # worker -> the bucket of its latest offer
        self._top = 0  # no bucket above this one holds an offer
        for w in reversed(self.workers.values()):  # (so that at first, ties go to the lowest index)
            self.push(w)

    def push(self, w: RolloutWorkerState) -> None:
        """``w``'s slots or state changed: offer it again if it accepts work."""
        if w.accepting:
            free = w.slots - len(w.running)
            old = self._bucket_of.get(w.name)
            if old is not None:
                del self._buckets[old][w.name]
            self._buckets[free][w.name] = None
            self._bucket_of[w.name] = free
            if free > self._top:
                self._top = free

    def pop_best(self) -> RolloutWorkerState | None:
        """Take the accepting worker with the most free slots, the latest offered among equals
        (None: no worker accepts)."""
        while self._top > 0:
            bucket = self._buckets[self._top]
            while bucket:
                name = next(reversed(bucket))
                del bucket[name], self._bucket_of[name]
                w = self.workers[name]
                if w.accepting:  # (then its offer is current: free slots == this bucket)
                    return w
            self._top -= 1
        return None

    def newest_accepting(self) -> RolloutWorkerState:
        """The accepting worker holding the newest weights (most free slots, then lowest index)."""
        accepting = [x for x in self.workers.values() if x.accepting]
        return max(accepting, key=lambda x: (x.version, x.slots - len(x.running), -x.index))


@dataclass(slots=True)
class TeacherWorkerState:
    name: str
    alive: bool = True
    restarting: bool = False
    batch_id: int | None = None
    sample_ids: tuple[int, ...] = ()
