"""A simulated rollout worker: batched decode advanced analytically between events.

Batching modes (``sim.rollout_batching``):

- ``wave`` — what the torch backend does: take every queued request (up to the slots) into
  one batch, decode until all have finished, report the results together at the end of the
  wave (each with its own finish time); requests that arrive meanwhile wait for the next wave.
  Reports reach the driver ``costs.delivery()`` after the wave ends (``sim.costs.return_s``).
- ``continuous`` — what vLLM does: requests join at the next decode iteration (after their
  prefill) and leave as soon as they finish; each completion is reported at once. The torch
  backend's continuous batching (``rollout.batching: continuous``) is the same with
  ``min_join``: queued requests join a running batch only once at least ``min(min_join,
  slots)`` slots are free (one prefill for the group); an idle worker takes whatever is queued.

No event per token: the worker keeps a global decode-step counter ``S`` (``step_count``). A sequence that
joins at step ``s0`` with response length ``L`` finishes at step ``s0 + L``; a heap gives the
next completion. Between events the number of active sequences is constant, so the time of
``k`` steps is ``segment_time`` (closed form) and the steps done when a poke cuts a segment
short (a new request, a weight sync, an eviction, the crowd on shared devices) come from
``segment_steps_within``. A request that arrives mid-step takes effect after that step, as in
the real engines. Weight versions are recorded as ``(step, version)`` change points (two
parallel lists), so a sequence's version spans are read off in O(log changes) when it
finishes. The worker runs as plain callbacks in the event order a SimPy process would have
(``sim/callbacks.py``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Callable, Protocol

import simpy

from asyncopd.control.messages import (
    Event, GenerationAborted, GenerationFinished, SyncWeights, WeightSyncFinished,
)
from sim.callbacks import Later, Soon, call_after, call_soon
from sim.cost_model import CostModel, Segment, segment_steps_within, segment_time
from sim.devices import SharedDevices


class RolloutHost(Protocol):
    """What a simulated rollout worker needs of the simulator (``sim.driver.SimDriver``)."""

    env: simpy.Environment
    costs: CostModel
    devices: SharedDevices
    placement: dict[str, list[int]]
    shared: set[str]

    def send(self, *events: Event) -> None: ...


@dataclass(slots=True)
class SimSeq:
    sample_id: int
    prompt_tokens: int
    length: int  # response tokens it produces unless aborted
    started_at: float = 0.0
    finished_at: float = 0.0
    s0: int = 0  # global decode step at which it joined
    spans: tuple[tuple[int, int], ...] = ()
    generated: int = 0
    aborted: str = ""


@dataclass
class _Batch:
    active: dict[int, SimSeq] = field(default_factory=dict)
    ends: list[tuple[int, int]] = field(default_factory=list)  # heap of (end step, sample_id)
    kv: int = 0  # KV tokens held by active sequences


class SimRolloutWorker:
    def __init__(self, host: RolloutHost, name: str, slots: int, mode: str, min_join: int = 1) -> None:
        if mode not in ("wave", "continuous"):
            raise ValueError(f"rollout batching must be 'wave' or 'continuous', got {mode!r}")
        self.host, self.env, self.name, self.slots, self.mode = host, host.env, name, slots, mode
        self.min_join = min_join
        self.costs = host.costs
        self.version = 0
        self.change_steps: list[int] = [0]  # the weight versions' change points: from step
        self.change_versions: list[int] = [0]  # change_steps[i] on, version change_versions[i]
        self.step_count = 0
        self.queue: list[SimSeq] = []
        self.batch = _Batch()
        self.done: list[SimSeq] = []  # finished in the current wave, not yet reported
        self.pending_sync: SyncWeights | None = None
        self.sync_ready = False  # overlap phase over: apply at the next step boundary
        self.sync_started = 0.0
        self.evict: set[int] = set()
        self._asleep = False  # parked: idle, or decoding a segment a poke may cut short
        self._segment: tuple[float, float, float, Segment, int, float] | None = None  # (start, seconds,
        self._segment_end: Later | None = None  # prefill, terms, steps, slowdown); None: idle
        self.devices = host.placement[name]
        self.shared = name in host.shared
        self.busy = False
        if self.shared:  # re-plan the segment in progress when the crowd on our devices changes
            host.devices.listen(name, self.devices, self._poke)
        call_soon(self.env, self._run)  # (where the worker's process would start)

    # ------------------------------------------------------------- driver calls
    def submit(self, seq: SimSeq) -> None:
        self.queue.append(seq)
        if self.mode == "continuous" or not self.batch.active:
            self._poke()

    def request_sync(self, action: SyncWeights) -> None:
        self.pending_sync, self.sync_ready, self.sync_started = action, False, self.env.now
        overlap = self.costs.sync().overlap_s
        if overlap > 0:  # (where a process waiting out the overlap would start, and then wait)
            call_soon(self.env, lambda: call_after(self.env, overlap, lambda: self._overlap_over(action)))
        else:
            self.sync_ready = True
            self._poke()

    def request_abort(self, sample_ids: tuple[int, ...]) -> None:
        ids = set(sample_ids)
        queued = [s for s in self.queue if s.sample_id in ids]
        self.queue = [s for s in self.queue if s.sample_id not in ids]
        for s in queued:  # never started: drop at once
            s.aborted, s.started_at, s.finished_at = "evict", self.env.now, self.env.now
            self._report([s])
        self.evict |= ids & set(self.batch.active)
        if self.evict:
            self._poke()

    # ------------------------------------------------------------------ the loop
    # The worker runs as callbacks (``sim/callbacks.py``), in the order a SimPy process running
    # the same loop would: ``_run`` is the loop's head; each wait ends the current call and
    # names what continues after it.
    def _overlap_over(self, action: SyncWeights) -> None:
        """The sync's overlap phase is over (a timeout's only callback, and the last thing it
        does): a parked worker wakes at once. A poke's urgent event would be the very next one
        processed (no urgent event of this time is pending while a normal one is processed),
        so waking here is the same order of events, without one."""
        if self.pending_sync is action:
            self.sync_ready = True
            if self._asleep:
                self._asleep = False
                self._woken(None)

    def _poke(self) -> None:
        """Something changed (a request, a sync, an eviction, the crowd on shared devices):
        a parked worker re-plans now (at an interruption's place in the queue); a running one
        sees it at its next pass through the loop."""
        if self._asleep:
            self._asleep = False
            Soon(self.env, self._woken)

    def _woken(self, _: object) -> None:
        if self._segment is None:  # idle: start over
            self._run()
            return
        self._segment_end.callbacks.remove(self._segment_over)  # (the segment's end no longer wakes it)
        self._segment_over()

    def _timed(self, seconds: float, then: Callable[[], None]) -> None:
        """``then()`` after ``seconds``; at once when there is nothing to wait."""
        if seconds > 0:
            call_after(self.env, seconds, then)
        else:
            then()

    def _run(self) -> None:
        """The loop's head: apply a pending sync, drop evicted sequences, then plan the next wait."""
        while True:
            if self.pending_sync is not None and self.sync_ready:
                self._apply_sync()
                return
            if self.evict:
                self._drop_evicted()
                continue
            if not self.batch.active and self.queue:  # an idle worker receives its requests
                self._set_busy(False)
                self._timed(self.costs.rollout_dispatch(), self._plan)
            else:
                self._plan()
            return

    def _plan(self) -> None:
        """Admit from the queue, then park for the segment up to the next completion (a poke
        cuts it short), park idle with nothing to decode, or decode one step when a sync or
        an eviction waits."""
        costs, b = self.costs, self.batch
        joining = self._admit() if self.queue else None
        pre = 0.0  # prefill of the joining requests: the batch stalls for it before decoding on
        if joining:
            self._set_busy(True)
        f = self._slowdown() if self.shared else 1.0  # shared devices: 1/f of the speed (re-planned
        if joining:                                     # when the crowd changes)
            pre = costs.prefill(sum([s.prompt_tokens for s in joining])) * f
        ends, active = b.ends, b.active
        while ends and ends[0][1] not in active:  # drop lazily deleted entries
            heapq.heappop(ends)
        if not active:
            self._set_busy(False)
            self._segment, self._asleep = None, True
            return
        seg = costs.decode_segment(len(active), b.kv)
        steps = ends[0][0] - self.step_count
        if (self.pending_sync is not None and self.sync_ready) or self.evict:  # urgent: one step only
            call_after(self.env, pre + segment_time(seg, 1) * f, lambda: self._advance(1))
            return
        full = pre + segment_time(seg, steps) * f
        self._segment, self._asleep = (self.env.now, full, pre, seg, steps, f), True
        self._segment_end = Later(self.env, full, self._segment_over)

    def _segment_over(self, _: object = None) -> None:
        """The parked segment ended, or was cut short: when woken early, finish the prefill and
        the decode step in progress first."""
        self._asleep = False
        t0, full, pre, seg, steps, f = self._segment
        now = self.env.now
        if now - t0 < full - 1e-12:
            k = min(steps, segment_steps_within(seg, max(0.0, now - t0 - pre) / f) + 1)
            call_after(self.env, max(0.0, t0 + pre + segment_time(seg, k) * f - now), lambda: self._advance(k))
        else:
            self._advance(steps)

    def _advance(self, k: int) -> None:
        """``k`` decode steps are done: report what finished, then loop."""
        b = self.batch
        ends, active = b.ends, b.active
        self.step_count = step = self.step_count + k
        b.kv += k * len(active)
        if ends[0][0] <= step:  # (else the batch is as it was: nothing finished)
            now = self.env.now
            while ends and ends[0][0] <= step:
                _, sid = heapq.heappop(ends)
                s = active.pop(sid, None)
                if s is None:  # lazily deleted (evicted / aborted)
                    continue
                self._close(s, s.s0 + s.length)
                s.finished_at = now
                self._finish(s)
            self._flush_if_due()
        self._run()

    def _slowdown(self) -> float:
        return self.host.devices.slowdown(self.name, self.devices)

    def _set_busy(self, busy: bool) -> None:
        """Occupy (or leave) this worker's devices while it has sequences to decode."""
        if self.shared and busy != self.busy:
            (self.host.devices.acquire if busy else self.host.devices.release)(self.name, self.devices)
        self.busy = busy

    def _admit(self) -> list[SimSeq]:
        b = self.batch
        if self.mode == "wave" and b.active:
            return []
        room = self.slots - len(b.active)
        if b.active and room < min(self.min_join, self.slots):  # (continuous: too few free slots to join yet)
            return []
        joining, self.queue = self.queue[:room], self.queue[room:]
        now, step, active, ends = self.env.now, self.step_count, b.active, b.ends
        for s in joining:
            s.started_at, s.s0 = now, step
            active[s.sample_id] = s
            b.kv += s.prompt_tokens
            heapq.heappush(ends, (step + s.length, s.sample_id))
        return joining

    def _close(self, s: SimSeq, end_step: int) -> None:
        """Fix the sequence's tokens [s0, end_step) and their version spans; free its KV."""
        s.generated = end_step - s.s0
        s.spans = self._spans(s.s0, end_step)
        self.batch.kv -= s.prompt_tokens + s.generated

    def _spans(self, a: int, b: int) -> tuple[tuple[int, int], ...]:
        """The versions of steps [a, b) as (version, steps) runs: change points i..j-1 fall in
        it, i the last one at or before a, j the first one at or after b (the change steps
        increase strictly)."""
        steps, versions = self.change_steps, self.change_versions
        if b <= a:
            return ()
        if steps[-1] <= a:  # (no weight change since it joined)
            return ((versions[-1], b - a),)
        i, j = bisect_right(steps, a) - 1, bisect_left(steps, b)
        runs = []
        for k in range(i, j):
            end = steps[k + 1] if k + 1 < j else b
            runs.append((versions[k], end - a))
            a = end
        return tuple(runs)

    def _finish(self, s: SimSeq) -> None:
        """Report now (continuous, ``min_join`` 1), or with the rest of the wave (wave) or of
        the answer (continuous, ``min_join`` > 1: ``_flush_if_due``)."""
        if self.mode == "wave" or self.min_join > 1:
            self.done.append(s)
        else:
            self._deliver([s])

    def _flush_if_due(self) -> None:
        """Report what ended once the answer is due: a wave when its batch is empty; the torch
        engine's continuous answer (``RolloutWorker.exchange``) once ``min_join`` have ended
        or the worker holds nothing else."""
        if self.mode == "wave":
            due = not self.batch.active
        else:
            due = len(self.done) >= self.min_join or not (self.batch.active or self.queue)
        if due:
            self._flush_wave()

    def _flush_wave(self) -> None:
        done, self.done = self.done, []
        if done:
            self._deliver(done)

    def _deliver(self, done: list[SimSeq]) -> None:
        """Report ``done`` as one answer once the return path (``costs.delivery()``, one draw
        per answer) has passed; the worker does not wait for it (the driver, not the worker,
        is what is late)."""
        delay = self.costs.delivery()
        if delay <= 0:
            self._report(done)
        else:  # (where a process waiting out the delay would start, and then wait)
            call_soon(self.env, lambda: call_after(self.env, delay, lambda: self._report(done)))

    def _drop_evicted(self) -> None:
        for sid in sorted(self.evict):
            s = self.batch.active.pop(sid, None)
            if s is not None:
                self._close(s, self.step_count)
                s.aborted, s.finished_at = "evict", self.env.now
                self._finish(s)
        self.evict.clear()
        self._flush_if_due()

    def _apply_sync(self) -> None:
        """Load the pending weights: paused for the transfer (then, ``recompute``, the batch's
        prefill), the new version applies from the current step on."""
        action = self.pending_sync
        assert action is not None
        paused_from = self.env.now
        self._set_busy(True)  # loading weights occupies the worker's devices, and is slowed on shared ones
        f = self._slowdown() if self.shared else 1.0  # (measured: two rollout workers on one core paused
                                                      # 1.12 ms, alone 0.51 ms)
        self._timed(self.costs.sync().pause_s * f, lambda: self._recompute(action, paused_from, f))

    def _recompute(self, action: SyncWeights, paused_from: float, f: float) -> None:
        if action.pause_mode == "recompute" and self.batch.active:
            self._timed(self.costs.prefill(self.batch.kv) * f, lambda: self._synced(action, paused_from))
        else:
            self._synced(action, paused_from)

    def _synced(self, action: SyncWeights, paused_from: float) -> None:
        b = self.batch
        self.version = max(self.version, action.version)
        if self.change_steps[-1] == self.step_count:
            self.change_versions[-1] = self.version
        else:
            self.change_steps.append(self.step_count)
            self.change_versions.append(self.version)
        self.pending_sync = None
        if action.pause_mode == "abort" and b.active:
            for s in list(b.active.values()):
                b.active.pop(s.sample_id)
                self._close(s, self.step_count)
                s.aborted, s.finished_at = "sync_abort", self.env.now
                self._finish(s)
            b.ends.clear()
            self._flush_wave()
        self.host.send(WeightSyncFinished(self.env.now, self.name, action.version, self.sync_started,
                                         paused_s=self.env.now - paused_from))
        self._run()

    def _report(self, done: list[SimSeq]) -> None:
        """Send ``done``'s results to the driver together, as one answer."""
        events: list[Event] = []
        for s in done:
            self.evict.discard(s.sample_id)
            if s.aborted:
                events.append(GenerationAborted(self.env.now, s.sample_id, self.name, s.started_at,
                                                s.generated, s.aborted, ended_at=s.finished_at))
            else:
                events.append(GenerationFinished(self.env.now, s.sample_id, self.name, s.started_at, s.spans,
                                                 s.prompt_tokens, ended_at=s.finished_at))
        self.host.send(*events)
