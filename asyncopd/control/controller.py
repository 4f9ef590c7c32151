"""The scheduling controller: one event-driven state machine for both drivers.

``Controller.handle(event) -> list[Action]`` is the whole interface (see
``asyncopd/control/messages.py`` and ``docs/architecture.md``). Pure Python on purpose: no
torch, ray or simpy, so the SimPy simulator and the Ray trainer run the same decisions.

After every event the controller schedules, in this order:

1. the learner: train when the policy has a consumable batch (evicting over-cap samples);
2. the teachers: each idle teacher takes up to ``teacher_max_batch`` generated samples, and
   waits for at least ``teacher_min_batch`` while more generations are in flight;
3. the rollout workers: fill free slots while the policy admits (worker with most free
   slots first; ties go to the worker whose slots changed most recently, which is usually
   the one that just finished a sequence and is admitting anyway).

Invariants (checked by ``check_invariants`` and the hypothesis tests):
every attempt ends exactly once as consumed / evicted / aborted(+re-queued) / unfinished;
no consumed sample exceeds ``policy.staleness_bound``; until the run stops, some work is
outstanding (or the controller is waiting for ``PromptsAvailable``).
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from typing import Any, Callable, Protocol, Sequence

from asyncopd.control import ledger as L
from asyncopd.control.ledger import Attempt, RolloutWorkerState, TeacherWorkerState
from asyncopd.control.messages import (
    AbortGeneration, Action, Event, Generate, GenerationAborted, GenerationFinished, PauseMode,
    PromptsAvailable, RunStarted, Score, ScoringFinished, Stop, SyncWeights, Train,
    StopRequested, TrainStepFinished, WeightSyncFinished, WorkerFailed, role_of,
)
from asyncopd.control.policies import FullyAsyncPolicy, Policy
from asyncopd.control.staleness import merge_spans

LEARNER = "learner-0"


class Observer(Protocol):
    """Receives what the run directory records. ``RunRecorder`` is the real one."""

    def on_sample(self, attempt: Attempt) -> None: ...  # attempt.record() is the samples.jsonl line
    def on_step(self, record: dict[str, Any]) -> None: ...
    def on_span(self, name: str, worker: str, lane: int, start: float, end: float, args: dict[str, Any]) -> None: ...
    def on_stop(self, summary: dict[str, Any]) -> None: ...
    def on_queues(self, t: float, depths: tuple[int, ...]) -> None: ...  # in the order of Controller.QUEUES


class ControllerDeadlock(RuntimeError):
    """Nothing is outstanding and nothing can start: a bug, never a normal outcome."""


class Controller:
    def __init__(
        self,
        *,
        policy: Policy,
        batch_size: int,
        total_steps: int,
        rollout_slots: Sequence[int],
        n_teachers: int,
        teacher_max_batch: int,
        teacher_min_batch: int = 1,
        pause_mode: PauseMode = "keep",
        observer: Observer | None = None,
        start_version: int = 0,
        first_prompt_id: int = 0,
        first_sample_id: int = 0,
        counters: dict[str, int] | None = None,
    ) -> None:
        """``start_version`` / ``first_prompt_id`` / ``first_sample_id`` / ``counters`` resume a run
        (see ``resume_point``): the learner and every rollout worker start at ``start_version``
        (the next update is step ``start_version``), fresh prompts continue from
        ``first_prompt_id``, sample ids from ``first_sample_id``, and the cumulative counters
        from ``counters`` (``consumed`` is ``batch_size * start_version`` by construction)."""
        if batch_size < 1 or total_steps < 1 or n_teachers < 1 or teacher_max_batch < 1:
            raise ValueError("batch_size, total_steps, n_teachers and teacher_max_batch must be >= 1")
        if not rollout_slots or min(rollout_slots) < 1:
            raise ValueError("need at least one rollout worker, each with >= 1 slot")
        if pause_mode not in ("keep", "abort", "recompute"):
            raise ValueError(f"pause_mode must be keep, abort or recompute, got {pause_mode!r}")
        if min(start_version, first_prompt_id, first_sample_id) < 0:
            raise ValueError("start_version, first_prompt_id and first_sample_id must be >= 0")
        if start_version >= total_steps:
            raise ValueError(f"start_version ({start_version}) must be < total_steps ({total_steps})")
        self.policy = policy
        self._evicts = isinstance(policy, FullyAsyncPolicy) and policy.evicts  # (policies are immutable)
        self.B = batch_size
        self.total_steps = total_steps
        self.teacher_max_batch = teacher_max_batch
        if not 1 <= teacher_min_batch <= teacher_max_batch:
            raise ValueError("teacher_min_batch must be between 1 and teacher_max_batch")
        self.teacher_min_batch = teacher_min_batch
        self.pause_mode: PauseMode = pause_mode
        self.observer = observer
        self.workers = {f"rollout-{i}": RolloutWorkerState(f"rollout-{i}", n, i, version=start_version)
                        for i, n in enumerate(rollout_slots)}
        self.teachers = {f"teacher-{i}": TeacherWorkerState(f"teacher-{i}") for i in range(n_teachers)}

        self.start_version = start_version
        self.version = start_version  # learner's latest version (= updates finished)
        self.steps_issued = start_version
        self.learner_busy = False
        self._step_info: dict[str, Any] = {}
        self.samples: dict[int, Attempt] = {}
        self._live: set[int] = set()
        self._next_sample_id = first_sample_id
        self._next_prompt_id = first_prompt_id
        self._fresh_admitted = batch_size * start_version  # (batched policies: the next batch is start_version)
        self._supply: int | None = 0
        self._requeue: deque[tuple[int, int | None, int]] = deque()
        self._score_queue: deque[int] = deque()
        self._ready: dict[int, None] = {}  # streaming: ready samples in completion order
        self._batch_generated: Counter[int] = Counter()
        self._batch_ready: dict[int, list[int]] = {}
        self._next_score_batch = 0
        self.counters: Counter[str] = Counter(counters or {})
        self.counters["consumed"] = batch_size * start_version
        self._attempts_before = self.counters["attempts"]  # attempts of the run before a resume
        self._status_counts: Counter[str] = Counter()  # live attempts per status
        self._syncing = 0  # live rollout workers loading weights
        self._free_heap: list[tuple[int, int, str]] = []  # (-free slots, -stamp, name), lazily updated
        self._stamp = 0  # pushes so far: a later push wins ties
        for w in reversed(self.workers.values()):  # (so that at first, ties go to the lowest index)
            self._push_worker(w)
        self._scoring = 0  # live teachers with a batch
        self.started = False
        self.done = False
        self.ok = False
        self.stop_reason = ""
        self._out: list[Action] = []
        self._stop_reason: str | None = None  # a StopRequested arrived: stop at the next update boundary
        self._handlers: dict[type, Callable[[Any], None]] = {
            RunStarted: self._on_run_started,
            PromptsAvailable: self._on_prompts,
            GenerationFinished: self._on_generation_finished,
            GenerationAborted: self._on_generation_aborted,
            ScoringFinished: self._on_scoring_finished,
            TrainStepFinished: self._on_train_finished,
            WeightSyncFinished: self._on_sync_finished,
            WorkerFailed: self._on_worker_failed,
            StopRequested: self._on_stop_requested,
        }

    # ------------------------------------------------------------------ public
    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions the driver must start now."""
        if self.done:
            return []
        self._out = []
        self._handlers[type(event)](event)
        if not self.done and self.started:
            self._schedule(event.t)
            if self.outstanding() == 0 and self._supply != 0:
                raise ControllerDeadlock(self.describe_state())
        if self.observer is not None:
            self.observer.on_queues(event.t, self.queue_tuple())
        return self._out

    @property
    def waiting_for_prompts(self) -> bool:
        return not self.done and self._supply == 0 and self.outstanding() == 0

    def outstanding(self) -> int:
        """Actions issued whose completion event has not arrived yet."""
        gen = self._status_counts[L.GENERATING]  # every generating attempt occupies a slot of a live worker
        return gen + self._syncing + self._scoring + int(self.learner_busy)

    QUEUES = ("generating", "awaiting_teacher", "scoring", "ready", "live", "requeued")

    def queue_tuple(self) -> tuple[int, ...]:
        """Depths in the order of ``QUEUES`` (cheap: maintained incrementally)."""
        c = self._status_counts
        return (c[L.GENERATING], c[L.GENERATED], c[L.SCORING], c[L.READY], len(self._live), len(self._requeue))

    def queue_depths(self) -> dict[str, int]:
        return dict(zip(self.QUEUES, self.queue_tuple()))

    @property
    def requeued_prompts(self) -> list[int]:
        """Prompts whose last attempt was aborted and that wait for a new attempt."""
        return [p for p, _, _ in self._requeue]

    def resume_point(self) -> dict[str, Any]:
        """Where a run resumed from a checkpoint of the learner at version ``steps_issued``
        continues: call it once every issued update has finished on the learner (e.g. just
        before handing the controller the ``TrainStepFinished`` of the update that wrote the
        checkpoint), so that every consumed sample belongs to an update the checkpoint holds.

        The data position is ``next_prompt_id``: every prompt admitted so far lies below it, so
        a resumed run (``first_prompt_id=next_prompt_id``) never trains a consumed prompt twice.
        The price: prompts admitted but not consumed yet (in flight, waiting for the teacher or
        the learner, or re-queued after an abort) are never trained; ``skipped_prompts`` lists
        them (after the run stopped: the prompts whose attempts ended ``unfinished``). Evicted
        prompts are not listed (they would not have been retried anyway)."""
        skipped = {self.samples[s].prompt_id for s in self._live} | {p for p, _, _ in self._requeue}
        if self.done:
            skipped |= {a.prompt_id for a in self.samples.values() if a.status == L.UNFINISHED}
        return {
            "version": self.steps_issued,
            "next_prompt_id": self._next_prompt_id,
            "next_sample_id": self._next_sample_id,
            "skipped_prompts": sorted(skipped),
            "counters": dict(self.counters),
        }

    def describe_state(self) -> str:
        ws = ", ".join(f"{w.name}(v{w.version}, running={len(w.running)}, syncing={w.syncing_to}, alive={w.alive})"
                       for w in self.workers.values())
        return (f"policy={self.policy.describe()} version={self.version} steps_issued={self.steps_issued} "
                f"learner_busy={self.learner_busy} queues={self.queue_depths()} supply={self._supply} workers: {ws}")

    def check_invariants(self) -> None:
        live = {sid for sid, a in self.samples.items() if a.status not in L.TERMINAL}
        assert live == self._live, f"live set drifted: {sorted(live ^ self._live)}"
        counts = Counter(self.samples[s].status for s in live)
        assert all(self._status_counts[k] == counts[k] for k in set(counts) | set(self._status_counts)), \
            (dict(self._status_counts), dict(counts))
        for w in self.workers.values():
            for slot, sid in w.running.items():
                a = self.samples[sid]
                assert a.status == L.GENERATING and a.worker == w.name and a.slot == slot
        bound = self.policy.staleness_bound
        if bound is not None:
            for a in self.samples.values():
                if a.status == L.CONSUMED:
                    assert a.staleness is not None and a.staleness.max <= bound, (a.sample_id, a.staleness, bound)
        assert self._syncing == sum(1 for w in self.workers.values() if w.alive and w.syncing_to is not None)
        assert self._scoring == sum(1 for t in self.teachers.values() if t.alive and t.batch_id is not None)
        c = self.counters
        assert c["attempts"] == self._attempts_before + len(self.samples)
        assert c["consumed"] == self.B * self.steps_issued

    # ---------------------------------------------------------------- handlers
    def _on_run_started(self, e: RunStarted) -> None:
        self.started = True

    def _on_prompts(self, e: PromptsAvailable) -> None:
        if e.count is None:
            self._supply = None
        elif self._supply is not None:
            self._supply += e.count

    def _on_generation_finished(self, e: GenerationFinished) -> None:
        a = self._running_attempt(e.sample_id, e.worker)
        if a is None:
            return
        a.started_at, a.finished_at = e.started_at, e.t if e.ended_at is None else e.ended_at
        a.set_spans(merge_spans(e.spans))
        a.prompt_tokens = e.prompt_tokens
        self._span("generate", a, e.started_at, a.finished_at, {"tokens": a.response_tokens})
        if a.doomed or self._over_cap(a):
            self._evict(a, "over_cap")
            return
        self._move(a, L.GENERATED)
        self._score_queue.append(a.sample_id)
        if a.batch is not None:
            self._batch_generated[a.batch] += 1

    def _on_generation_aborted(self, e: GenerationAborted) -> None:
        a = self._running_attempt(e.sample_id, e.worker)
        if a is None:
            return
        a.started_at, a.finished_at = e.started_at, e.t if e.ended_at is None else e.ended_at
        self._span("generate (aborted)", a, e.started_at, a.finished_at, {"tokens": e.tokens_done, "reason": e.reason})
        if a.doomed or e.reason == "evict":
            self._evict(a, "over_cap")
        else:
            self._abort_and_requeue(a, e.reason)

    def _on_scoring_finished(self, e: ScoringFinished) -> None:
        tw = self.teachers.get(e.worker)
        if tw is None or not tw.alive or tw.batch_id != e.batch_id:
            return
        ids, tw.batch_id, tw.sample_ids = tw.sample_ids, None, ()
        self._scoring -= 1
        self._emit_span("score", e.worker, 0, e.started_at, e.t,
                        {"samples": len(ids), "batch_id": e.batch_id, "tokens": self._tokens(ids)})
        for sid in ids:
            a = self.samples[sid]
            if a.status != L.SCORING:
                continue
            a.score_started_at = e.started_at
            if a.doomed or self._over_cap(a):
                self._evict(a, "over_cap")
                continue
            self._move(a, L.READY)
            a.ready_at = e.t
            if a.batch is None:
                self._ready[sid] = None
            else:
                self._batch_ready.setdefault(a.batch, []).append(sid)

    def _on_train_finished(self, e: TrainStepFinished) -> None:
        if not self.learner_busy or e.step != self._step_info.get("step"):
            return
        self.learner_busy = False
        self.version = e.step + 1
        self._emit_span("train", LEARNER, 0, e.started_at, e.t,
                        {"step": e.step, "samples": self.B, "tokens": self._step_info["tokens"]})
        info = self._step_info
        if self.observer:
            self.observer.on_step({
                **info, "version": self.version, "train_start": e.started_at, "train_end": e.t,
                "metrics": dict(e.metrics), "counters": dict(self.counters),
            })
        if self.version >= self.total_steps:
            self._stop(True, "completed all learner steps", e.t)
            return
        if self._stop_reason is not None:
            self._stop(True, f"stopped on request: {self._stop_reason}", e.t)
            return
        for w in self.workers.values():
            self._request_sync(w)

    def _on_sync_finished(self, e: WeightSyncFinished) -> None:
        w = self.workers.get(e.worker)
        if w is None or not w.alive or w.syncing_to is None:
            return
        w.version, w.syncing_to = max(w.version, e.version), None
        self._syncing -= 1
        self._push_worker(w)
        args = {"version": e.version} if e.paused_s is None else {"version": e.version, "paused_s": e.paused_s}
        self._emit_span("sync", w.name, -1, e.started_at, e.t, args)
        self._request_sync(w)

    def _on_stop_requested(self, e: StopRequested) -> None:
        self._stop_reason = e.reason
        if not self.learner_busy:
            self._stop(True, f"stopped on request: {e.reason}", e.t)

    def _on_worker_failed(self, e: WorkerFailed) -> None:
        role = role_of(e.worker)
        self.counters[f"failed_{role}"] += 1
        if role == "rollout":
            w = self.workers.get(e.worker)
            if w is None or not w.alive:
                return
            self._syncing -= w.syncing_to is not None
            w.alive, w.syncing_to = False, None
            for sid in list(w.running.values()):
                a = self.samples[sid]
                a.finished_at = e.t
                self._abort_and_requeue(a, "worker_failed")
            w.release_all()
            if not any(x.alive for x in self.workers.values()):
                self._stop(False, f"all rollout workers failed (last: {e.worker}: {e.error})", e.t)
        elif role == "teacher":
            tw = self.teachers.get(e.worker)
            if tw is None or not tw.alive:
                return
            tw.alive = False
            for sid in reversed(tw.sample_ids):
                a = self.samples[sid]
                if a.status == L.SCORING:
                    self._move(a, L.GENERATED)
                    a.score_worker = None
                    self._score_queue.appendleft(sid)
            self._scoring -= tw.batch_id is not None
            tw.batch_id, tw.sample_ids = None, ()
            if not any(t.alive for t in self.teachers.values()):
                self._stop(False, f"all teacher workers failed (last: {e.worker}: {e.error})", e.t)
        else:
            self._stop(False, f"{e.worker} failed: {e.error}", e.t)

    # -------------------------------------------------------------- scheduling
    def _schedule(self, t: float) -> None:
        self._maybe_train(t)
        self._fill_teachers()
        self._fill_rollout(t)

    def _maybe_train(self, t: float) -> None:
        if self.learner_busy or self.steps_issued >= self.total_steps or self._stop_reason is not None:
            return
        step = self.steps_issued
        if self.policy.batched:
            ids = self._batch_ready.get(step, [])
            if len(ids) < self.B:
                return
            chosen = self._batch_ready.pop(step)
        else:
            # (over-cap ready samples are already gone: checked on arrival and after every update)
            if len(self._ready) < self.B:
                return
            chosen = list(self._ready)[: self.B]
            for sid in chosen:
                del self._ready[sid]
        self._step_info = {"step": step, "issued_at": t, "queues": self.queue_depths(), "tokens": self._tokens(chosen)}
        cap = getattr(self.policy, "max_staleness", None)
        for sid in chosen:
            a = self.samples[sid]
            self._move(a, L.CONSUMED)
            a.consumed_step, a.consumed_at = step, t
            a.staleness = a.staleness_at(step)
            a.exceeded_cap = cap is not None and a.staleness.max > cap
            self.counters["exceeded_cap"] += int(a.exceeded_cap)
            self._finish(a)
        self.counters["consumed"] += len(chosen)
        self.learner_busy = True
        self.steps_issued += 1
        self._out.append(Train(step, tuple(chosen)))
        if self._evicts:
            self._evict_doomed()

    def _fill_teachers(self) -> None:
        if not self._score_queue or self._scoring == len(self.teachers):  # nothing to do / all busy
            return
        if len(self._score_queue) < self.teacher_min_batch and self._status_counts[L.GENERATING] > 0:
            return  # too few to start a batch, and more are on their way
        for tw in self.teachers.values():
            if not tw.alive or tw.batch_id is not None or not self._score_queue:
                continue
            take: list[int] = []
            for sid in self._score_queue:
                a = self.samples[sid]
                if self.policy.scoring_barrier and self._batch_generated[a.batch] < self.B:  # type: ignore[index]
                    continue
                take.append(sid)
                if len(take) == self.teacher_max_batch:
                    break
            if not take or (len(take) < self.teacher_min_batch and self._status_counts[L.GENERATING] > 0):
                return  # (a small batch waits only while more samples are on their way)
            taken = set(take)
            self._score_queue = deque(s for s in self._score_queue if s not in taken)
            bid = self._next_score_batch
            self._next_score_batch += 1
            for sid in take:
                a = self.samples[sid]
                self._move(a, L.SCORING)
                a.score_worker = tw.name
            tw.batch_id, tw.sample_ids = bid, tuple(take)
            self._scoring += 1
            self._out.append(Score(bid, tuple(take), tw.name))

    def _fill_rollout(self, t: float) -> None:
        """Admit while the policy allows, each prompt to the worker with the most free slots
        (ties: the most recently changed worker), found through a lazily updated heap. The gate depends only on a
        worker's version, and a newer version is never more restrictive: when the newest
        accepting worker is refused, everyone is."""
        while self._gate_open(self.version):  # no worker holds a newer version than the learner
            w = self._pop_best_worker()
            if w is None:
                return
            item = self._next_admission(w.version)
            if item is None:
                self._push_worker(w)
                accepting = [x for x in self.workers.values() if x.accepting]
                newest = max(accepting, key=lambda x: (x.version, x.slots - len(x.running), -x.index))
                if newest.version == w.version:
                    return
                w, item = newest, self._next_admission(newest.version)
                if item is None:
                    return
            self._issue(w, item, t)
            self._push_worker(w)

    def _push_worker(self, w: RolloutWorkerState) -> None:
        if w.accepting:
            self._stamp += 1
            heapq.heappush(self._free_heap, (len(w.running) - w.slots, -self._stamp, w.name))

    def _pop_best_worker(self) -> RolloutWorkerState | None:
        """Pop the accepting worker with the most free slots; skip entries that went stale
        (every change that frees a slot or ends a sync pushes a fresh entry)."""
        while self._free_heap:
            neg_free, _, name = heapq.heappop(self._free_heap)
            w = self.workers[name]
            if w.accepting and len(w.running) - w.slots == neg_free:
                return w
        return None

    def _gate_open(self, worker_version: int) -> bool:
        """Would ``_next_admission(worker_version)`` admit something? (Without taking it.)"""
        if self.policy.batched:
            limit = worker_version + self.policy.lead
            if any(b is not None and b <= limit for _, b, _ in self._requeue):
                return True
            b = self._fresh_admitted // self.B
            return b < self.total_steps and b <= limit and self._supply != 0
        held = len(self._live) + self.counters["consumed"]
        return (held < self.policy.admission_limit(self.B, self.version)  # type: ignore[union-attr]
                and held < self.total_steps * self.B and (bool(self._requeue) or self._supply != 0))

    def _next_admission(self, worker_version: int) -> tuple[int, int | None, int] | None:
        """Pop the next (prompt_id, batch, attempt) the policy lets start on a worker holding
        ``worker_version``, or None."""
        if self.policy.batched:
            limit = worker_version + self.policy.lead
            for i, (p, b, k) in enumerate(self._requeue):
                if b is not None and b <= limit:
                    del self._requeue[i]
                    return p, b, k
            b = self._fresh_admitted // self.B
            if b >= self.total_steps or b > limit or self._supply == 0:
                return None
            return self._take_fresh_prompt(b)
        assert isinstance(self.policy, FullyAsyncPolicy)
        held = len(self._live) + self.counters["consumed"]  # admitted, minus aborted/evicted permits
        if held >= self.policy.admission_limit(self.B, self.version) or held >= self.total_steps * self.B:
            return None
        if self._requeue:
            return self._requeue.popleft()
        if self._supply == 0:
            return None
        return self._take_fresh_prompt(None)

    def _take_fresh_prompt(self, batch: int | None) -> tuple[int, int | None, int]:
        p = self._next_prompt_id
        self._next_prompt_id += 1
        self._fresh_admitted += 1
        if self._supply is not None:
            self._supply -= 1
        self.counters["prompts_admitted"] += 1
        return p, batch, 0

    def _issue(self, w: RolloutWorkerState, item: tuple[int, int | None, int], t: float) -> None:
        prompt_id, batch, attempt = item
        sid = self._next_sample_id
        self._next_sample_id += 1
        slot = w.occupy(sid)
        self.samples[sid] = Attempt(sid, prompt_id, attempt, batch, w.name, slot, w.version, t)
        self._live.add(sid)
        self._status_counts[L.GENERATING] += 1
        self.counters["attempts"] += 1
        self._out.append(Generate(sid, prompt_id, w.name, slot))

    def _request_sync(self, w: RolloutWorkerState) -> None:
        if w.alive and w.syncing_to is None and w.version < self.version:
            w.syncing_to = self.version
            self._syncing += 1
            self._out.append(SyncWeights(w.name, self.version, self.pause_mode))

    # ------------------------------------------------------------ evictions
    def _over_cap(self, a: Attempt) -> bool:
        """Certain to exceed the hard cap: the earliest update that could consume it is
        ``steps_issued``, and staleness only grows from there."""
        if not self._evicts:
            return False
        return self.steps_issued - a.start_version > self.policy.max_staleness  # type: ignore[union-attr,operator]

    def _evict_doomed(self) -> None:
        aborts: dict[str, list[int]] = {}
        for sid in sorted(self._live):
            a = self.samples[sid]
            if a.doomed or not self._over_cap(a):
                continue
            if a.status == L.GENERATING:
                a.doomed = True
                aborts.setdefault(a.worker, []).append(sid)
            elif a.status == L.SCORING:
                a.doomed = True
            else:
                self._evict(a, "over_cap")
        for worker, ids in aborts.items():
            self._out.append(AbortGeneration(worker, tuple(ids), "evict"))

    def _evict(self, a: Attempt, reason: str) -> None:
        if a.status == L.GENERATED:
            self._score_queue.remove(a.sample_id)
            if a.batch is not None:
                self._batch_generated[a.batch] -= 1
        self._ready.pop(a.sample_id, None)
        self._move(a, L.EVICTED)
        a.end_reason = reason
        self.counters["evicted"] += 1
        self._finish(a)

    def _abort_and_requeue(self, a: Attempt, reason: str) -> None:
        self._move(a, L.ABORTED)
        a.end_reason = reason
        self.counters["aborted"] += 1
        self._requeue.append((a.prompt_id, a.batch, a.attempt + 1))
        self._finish(a)

    # ------------------------------------------------------------- helpers
    def _running_attempt(self, sample_id: int, worker: str) -> Attempt | None:
        a = self.samples.get(sample_id)
        w = self.workers.get(worker)
        if a is None or w is None or a.status != L.GENERATING or a.worker != worker or not w.alive:
            return None  # late or duplicate report (e.g. from a worker declared failed)
        w.release(a.slot)
        self._push_worker(w)
        return a

    def _move(self, a: Attempt, status: str) -> None:
        self._status_counts[a.status] -= 1
        if status not in L.TERMINAL:
            self._status_counts[status] += 1
        a.status = status

    def _tokens(self, ids: Sequence[int]) -> int:
        """Prompt + response tokens of these samples (what a teacher or learner pass reads)."""
        return sum(self.samples[i].prompt_tokens + self.samples[i].response_tokens for i in ids)

    def _finish(self, a: Attempt) -> None:
        """``a`` reached a terminal state: leave the live set and record it."""
        self._live.discard(a.sample_id)
        if self.observer:
            self.observer.on_sample(a)

    def _span(self, name: str, a: Attempt, start: float, end: float, args: dict[str, Any]) -> None:
        self._emit_span(name, a.worker, a.slot, start, end, {"sample_id": a.sample_id, **args})

    def _emit_span(self, name: str, worker: str, lane: int, start: float, end: float, args: dict[str, Any]) -> None:
        if self.observer:
            self.observer.on_span(name, worker, lane, start, end, args)

    def _stop(self, ok: bool, reason: str, t: float) -> None:
        self.done, self.ok, self.stop_reason = True, ok, reason
        for sid in sorted(self._live):
            a = self.samples[sid]
            self._move(a, L.UNFINISHED)
            a.end_reason = "run_stopped"
            self._finish(a)
        for w in self.workers.values():
            w.release_all()
        self._out.append(Stop(ok, reason))
        if self.observer:
            self.observer.on_stop({"ok": ok, "reason": reason, "t_end": t, "version": self.version,
                                   "counters": dict(self.counters), "policy": self.policy.describe()})
