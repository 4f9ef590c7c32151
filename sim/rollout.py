"""A simulated rollout worker that batches like the torch backend: in *waves*.

The worker takes every queued request (up to its slots) into one batch, prefills it, then
decodes one token per active sequence per step, ``t_step(n) = a + b*n`` for ``n`` active
sequences. Sequences leave the batch as they finish; new requests wait for the next wave.
Results are reported when the wave ends, each with its own finish time.

No event per token: between two "interesting" instants (the next completion, a weight
sync or an abort arriving) the active count is constant, so progress advances in one
timeout of ``k * t_step(n)``. A sync that arrives mid-step takes effect after that step,
as in the real engine (updates are applied between decode steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import simpy

from asyncopd.control import messages as M

if TYPE_CHECKING:
    from sim.driver import SimDriver


@dataclass
class SimSeq:
    sample_id: int
    prompt_tokens: int
    length: int  # response tokens it will produce if not aborted
    started_at: float = 0.0
    finished_at: float = 0.0
    spans: list[list[int]] = field(default_factory=list)  # [[version, n], ...]
    aborted: str = ""

    @property
    def generated(self) -> int:
        return sum(n for _, n in self.spans)

    def add(self, version: int, n: int) -> None:
        if n <= 0:
            return
        if self.spans and self.spans[-1][0] == version:
            self.spans[-1][1] += n
        else:
            self.spans.append([version, n])


class SimRolloutWorker:
    def __init__(self, driver: "SimDriver", name: str, slots: int) -> None:
        self.d, self.env, self.name, self.slots = driver, driver.env, name, slots
        self.version = 0
        self.queue: list[SimSeq] = []
        self.pending_sync: M.SyncWeights | None = None
        self.sync_requested_at = 0.0
        self.evict: set[int] = set()
        self.alive = True
        self.busy = False
        self._wake = self.env.event()
        self.proc = self.env.process(self._loop())

    # --------------------------------------------------------- driver calls
    def submit(self, seq: SimSeq) -> None:
        self.queue.append(seq)
        if not self.busy:
            self._poke()

    def request_sync(self, action: M.SyncWeights) -> None:
        self.pending_sync, self.sync_requested_at = action, self.env.now
        self._poke()

    def request_abort(self, sample_ids: tuple[int, ...]) -> None:
        queued = [s for s in self.queue if s.sample_id in sample_ids]
        self.queue = [s for s in self.queue if s.sample_id not in sample_ids]
        for s in queued:  # never started: drop at once
            s.aborted, s.started_at, s.finished_at = "evict", self.env.now, self.env.now
        self._report(queued)
        self.evict.update(set(sample_ids) - {s.sample_id for s in queued})
        self._poke()

    def _has_request(self, active: list[SimSeq]) -> bool:
        return self.pending_sync is not None or any(s.sample_id in self.evict for s in active)

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------ processes
    def _loop(self):
        while self.alive:
            if self.pending_sync is not None:
                yield from self._sync(active=[])
            elif self.queue:
                wave, self.queue = self.queue[: self.slots], self.queue[self.slots:]
                self.busy = True
                yield from self._wave(wave)
                self.busy = False
            else:
                self._wake = self.env.event()
                yield self._wake

    def _wave(self, wave: list[SimSeq]):
        costs = self.d.costs
        for s in wave:
            s.started_at = self.env.now
        yield self.env.timeout(costs.prefill(sum(s.prompt_tokens for s in wave)))
        active, done = list(wave), []
        while active:
            dt = costs.decode_step(len(active))
            if self._has_request(active):
                steps = 1  # apply the pending request after the step in progress
                yield self.env.timeout(dt)
            else:
                steps = min(s.length - s.generated for s in active)
                self._wake = self.env.event()
                t0 = self.env.now
                yield self.env.timeout(steps * dt) | self._wake
                if self.env.now - t0 < steps * dt - 1e-12:  # woken: finish the step in progress
                    k = min(steps, max(1, math.ceil((self.env.now - t0) / dt - 1e-9)))
                    yield self.env.timeout(t0 + k * dt - self.env.now)
                    steps = k
            still = []
            for s in active:
                s.add(self.version, steps)
                if s.generated >= s.length:
                    s.finished_at = self.env.now
                    done.append(s)
                elif s.sample_id in self.evict:
                    s.aborted, s.finished_at = "evict", self.env.now
                    done.append(s)
                else:
                    still.append(s)
            active = still
            if self.pending_sync is not None:
                yield from self._sync(active)  # in abort mode this reports and empties `active`
        self._report(done)

    def _sync(self, active: list[SimSeq]):
        action = self.pending_sync
        assert action is not None
        start = self.env.now
        yield self.env.timeout(self.d.costs.sync())
        if action.pause_mode == "recompute" and active:
            yield self.env.timeout(self.d.costs.prefill(sum(s.prompt_tokens + s.generated for s in active)))
        self.version = max(self.version, action.version)
        self.pending_sync = None
        if action.pause_mode == "abort" and active:
            # Report the aborted generations before the sync completes, as the Ray driver does.
            for s in active:
                s.aborted, s.finished_at = "sync_abort", self.env.now
            self._report(active)
            active.clear()
        self.d.send(M.WeightSyncFinished(self.env.now, self.name, action.version, start))

    def _report(self, seqs: list[SimSeq]) -> None:
        for s in seqs:
            self.evict.discard(s.sample_id)
            if s.aborted:
                self.d.send(M.GenerationAborted(self.env.now, s.sample_id, self.name, s.started_at,
                                                s.generated, s.aborted, ended_at=s.finished_at))
            else:
                self.d.send(M.GenerationFinished(self.env.now, s.sample_id, self.name, s.started_at,
                                                 tuple((v, n) for v, n in s.spans), s.prompt_tokens,
                                                 ended_at=s.finished_at))
