"""The scheduling controller: one event-driven state machine for both drivers.

``Controller.handle(event) -> list[Action]`` is the whole interface (see
``asyncopd/control/messages.py`` and ``docs/architecture.md``). Pure Python on purpose: no
torch, ray or simpy, so the SimPy simulator and the Ray trainer run the same decisions.

The controller keeps all state and handles the events; the policy (``policy_base.Policy``)
makes the policy's decisions through the controller's read-only ``SchedulerView``. After
every event the controller schedules, in this order:

1. the learner: train when the policy has a consumable batch (evicting doomed samples);
2. the teachers: each idle teacher takes up to ``teacher_max_batch`` generated samples the
   policy lets it score, and waits for at least ``teacher_min_batch`` while more generations
   are in flight;
3. the rollout workers: fill free slots while the policy admits (the worker with most free
   slots first, ``ledger.RolloutPool``).

Invariants (checked by ``check_invariants`` and the hypothesis tests):
every attempt ends exactly once as consumed / evicted / aborted(+re-queued) / unfinished;
no consumed sample exceeds ``policy.staleness_bound``; until the run stops, some work is
outstanding (or the controller is waiting for ``PromptsAvailable``).

(Over 400 lines on purpose: one state machine whose handlers share private state and
invariants; the parts with a job of their own are already out: the policies, the ledger
of attempts and workers, staleness.)
"""

from __future__ import annotations

from collections import Counter, deque
from itertools import islice
from typing import Any, Callable, Collection, Iterable, Protocol, Sequence

from asyncopd.control.ledger import (
    ABORTED, CONSUMED, EVICTED, GENERATED, GENERATING, READY, SCORING, TERMINAL, UNFINISHED,
    Attempt, RolloutPool, RolloutWorkerState, TeacherWorkerState,
)
from asyncopd.control.messages import (
    AbortGeneration, Action, Event, Generate, GenerationAborted, GenerationFinished, PauseMode,
    PromptsAvailable, RunStarted, Score, ScoringFinished, Stop, SyncWeights, Train,
    StopRequested, TrainStepFinished, WeightSyncFinished, WorkerFailed, WorkerRestarted, role_of,
)
from asyncopd.control.policy_base import Admit, Policy, Requeued

LEARNER = "learner-0"
_NONE_READY: dict[int, None] = {}


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
        if not 1 <= teacher_min_batch <= teacher_max_batch:
            raise ValueError("teacher_min_batch must be between 1 and teacher_max_batch")
        self.policy = policy
        self._all_scorable = type(policy).scorable is Policy.scorable  # (the base: every sample, at once)
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.teacher_max_batch = teacher_max_batch
        self.teacher_min_batch = teacher_min_batch
        self.pause_mode: PauseMode = pause_mode
        self.observer = observer
        self.pool = RolloutPool(list(rollout_slots), start_version)
        self.workers = self.pool.workers
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
        self.fresh_admitted = batch_size * start_version  # (batched policies: the next batch is start_version)
        self._supply: int | None = 0
        self._requeue: deque[Requeued] = deque()
        self._score_queue: deque[int] = deque()
        self._ready: dict[int, None] = {}  # ready samples in completion order
        self._batch_ready: dict[int, dict[int, None]] = {}  # the same, per learner batch (when batched)
        self._batch_generated: Counter[int] = Counter()
        self._next_score_batch = 0
        self.counters: Counter[str] = Counter(counters or {})
        self.counters["consumed"] = batch_size * start_version
        self._attempts_before = self.counters["attempts"]  # attempts of the run before a resume
        self._status_counts = dict.fromkeys((GENERATING, GENERATED, SCORING, READY), 0)  # live attempts per status
        self._syncing = 0  # live rollout workers loading weights
        self._scoring = 0  # live teachers with a batch
        self._restarting = 0  # failed workers the driver is bringing back
        self.started = False
        self.done = False
        self.ok = False
        self.stop_reason = ""
        self._out: list[Action] = []
        self._stop_reason: str | None = None  # a StopRequested arrived: stop at the next update boundary

    # ------------------------------------------------------------------ public
    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return the actions the driver must start now."""
        if self.done:
            return []
        self._out = []
        self._HANDLERS[type(event)](self, event)
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
        generating = self._status_counts[GENERATING]  # every generating attempt occupies a slot of a live worker
        return generating + self._syncing + self._scoring + self._restarting + self.learner_busy

    QUEUES = ("generating", "awaiting_teacher", "scoring", "ready", "live", "requeued")

    def queue_tuple(self) -> tuple[int, ...]:
        """Depths in the order of ``QUEUES`` (cheap: maintained incrementally)."""
        c = self._status_counts
        return (c[GENERATING], c[GENERATED], c[SCORING], c[READY], len(self._live), len(self._requeue))

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
            skipped |= {a.prompt_id for a in self.samples.values() if a.status == UNFINISHED}
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
        live = {sid for sid, a in self.samples.items() if a.status not in TERMINAL}
        assert live == self._live, f"live set drifted: {sorted(live ^ self._live)}"
        counts = Counter(self.samples[s].status for s in live)
        assert all(self._status_counts[k] == counts[k] for k in set(counts) | set(self._status_counts)), \
            (dict(self._status_counts), dict(counts))
        for w in self.workers.values():
            for slot, sid in w.running.items():
                a = self.samples[sid]
                assert a.status == GENERATING and a.worker == w.name and a.slot == slot
        ready = [sid for sid, a in self.samples.items() if a.status == READY]
        assert sorted(ready) == sorted(self._ready), "ready set drifted"
        assert sum(len(ids) for ids in self._batch_ready.values()) == sum(
            1 for sid in ready if self.samples[sid].batch is not None), "per-batch ready sets drifted"
        bound = self.policy.staleness_bound
        if bound is not None:
            for a in self.samples.values():
                if a.status == CONSUMED:
                    assert a.staleness is not None and a.staleness.max <= bound, (a.sample_id, a.staleness, bound)
        assert self._syncing == sum(1 for w in self.workers.values() if w.alive and w.syncing_to is not None)
        assert self._scoring == sum(1 for t in self.teachers.values() if t.alive and t.batch_id is not None)
        assert self._restarting == sum(1 for x in [*self.workers.values(), *self.teachers.values()] if x.restarting)
        c = self.counters
        assert c["attempts"] == self._attempts_before + len(self.samples)
        assert c["consumed"] == self.batch_size * self.steps_issued

    # ------------------------------------------------- the policy's read-only view
    # (``policy_base.SchedulerView``; batch_size, total_steps, version, steps_issued and
    # fresh_admitted are plain attributes above)
    @property
    def held(self) -> int:
        return len(self._live) + self.counters["consumed"]

    @property
    def prompts_left(self) -> bool:
        return self._supply != 0

    @property
    def requeued(self) -> Sequence[Requeued]:
        return self._requeue

    def ready_count(self) -> int:
        return len(self._ready)

    def ready_in_order(self) -> Iterable[int]:
        return self._ready

    def ready_in_batch(self, batch: int) -> Collection[int]:
        return self._batch_ready.get(batch, _NONE_READY).keys()

    def generated_in_batch(self, batch: int) -> int:
        return self._batch_generated[batch]

    def live_attempts(self) -> list[Attempt]:
        return [self.samples[sid] for sid in sorted(self._live)]

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
        a.delivered_at = e.t
        a.set_spans(e.spans)
        a.prompt_tokens = e.prompt_tokens
        args = {"sample_id": a.sample_id, "tokens": a.response_tokens}
        if e.wave_cpu_s is not None:
            args["wave_cpu_s"] = e.wave_cpu_s
        if e.cpu_s is not None:
            args["cpu_s"] = e.cpu_s
        self._emit_span("generate", a.worker, a.slot, e.started_at, a.finished_at, args)
        if a.doomed or self.policy.doomed(self, a):
            self._evict(a, "over_cap")
            return
        self._move(a, GENERATED)
        self._score_queue.append(a.sample_id)
        if a.batch is not None:
            self._batch_generated[a.batch] += 1

    def _on_generation_aborted(self, e: GenerationAborted) -> None:
        a = self._running_attempt(e.sample_id, e.worker)
        if a is None:
            return
        a.started_at, a.finished_at = e.started_at, e.t if e.ended_at is None else e.ended_at
        a.delivered_at = e.t
        self._emit_span("generate (aborted)", a.worker, a.slot, e.started_at, a.finished_at,
                        {"sample_id": a.sample_id, "tokens": e.tokens_done, "reason": e.reason})
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
                        {"samples": len(ids), "batch_id": e.batch_id, "tokens": self._tokens(ids),
                         **({"cpu_s": e.cpu_s} if e.cpu_s is not None else {})})
        for sid in ids:
            a = self.samples[sid]
            if a.status != SCORING:
                continue
            a.score_started_at = e.started_at
            if a.doomed or self.policy.doomed(self, a):
                self._evict(a, "over_cap")
                continue
            self._move(a, READY)
            a.ready_at = e.t
            self._ready[sid] = None
            if a.batch is not None:
                self._batch_ready.setdefault(a.batch, {})[sid] = None

    def _on_train_finished(self, e: TrainStepFinished) -> None:
        if not self.learner_busy or e.step != self._step_info.get("step"):
            return
        self.learner_busy = False
        self.version = e.step + 1
        cpu = e.metrics.get("cpu_s")  # (real runs: the learner's CPU time on the update)
        self._emit_span("train", LEARNER, 0, e.started_at, e.t,
                        {"step": e.step, "samples": self.batch_size, "tokens": self._step_info["tokens"],
                         **({"cpu_s": cpu} if cpu is not None else {})})
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
        self.pool.push(w)
        args = {"version": e.version} if e.paused_s is None else {"version": e.version, "paused_s": e.paused_s}
        self._emit_span("sync", w.name, -1, e.started_at, e.t, args)
        self._request_sync(w)

    def _on_stop_requested(self, e: StopRequested) -> None:
        self._stop_reason = e.reason
        if not self.learner_busy:
            self._stop(True, f"stopped on request: {e.reason}", e.t)

    def _on_worker_failed(self, e: WorkerFailed) -> None:
        """A worker died: re-queue its work (generations restart from their prompt, a teacher's
        batch goes back to the front of the scoring queue; ``redone_*`` count them). The run
        stops when a role has no worker left that is alive or coming back, or the learner died."""
        role = role_of(e.worker)
        group: dict[str, Any] = self.workers if role == "rollout" else self.teachers if role == "teacher" else {}
        w = group.get(e.worker)
        if w is None and group:  # (no such worker)
            return
        if w is None:  # the learner: nothing can go on without it
            self.counters[f"failed_{role}"] += 1
            self._stop(False, f"{e.worker} failed: {e.error}", e.t)
            return
        if w.alive:
            self.counters[f"failed_{role}"] += 1
            (self._rollout_failed if role == "rollout" else self._teacher_failed)(w, e.t)
            w.alive = False
        elif not w.restarting:  # (a late or duplicate report)
            return
        self._restarting += int(e.restarting) - int(w.restarting)
        w.restarting = e.restarting
        if not any(x.alive or x.restarting for x in group.values()):
            self._stop(False, f"all {role} workers failed (last: {e.worker}: {e.error})", e.t)

    def _rollout_failed(self, w: RolloutWorkerState, t: float) -> None:
        self._syncing -= w.syncing_to is not None
        w.syncing_to = None
        for sid in list(w.running.values()):
            a = self.samples[sid]
            a.finished_at = t
            self._abort_and_requeue(a, "worker_failed")
            self.counters["redone_generations"] += 1
        w.release_all()

    def _teacher_failed(self, tw: TeacherWorkerState, t: float) -> None:
        for sid in reversed(tw.sample_ids):
            a = self.samples[sid]
            if a.status == SCORING:
                self._move(a, GENERATED)
                a.score_worker = None
                self._score_queue.appendleft(sid)
                self.counters["redone_scoring"] += 1
        self._scoring -= tw.batch_id is not None
        tw.batch_id, tw.sample_ids = None, ()

    def _on_worker_restarted(self, e: WorkerRestarted) -> None:
        """A worker is back: a teacher takes batches again; a rollout worker first syncs to the
        newest version (it accepts samples once that sync finished)."""
        role = role_of(e.worker)
        w = (self.workers if role == "rollout" else self.teachers).get(e.worker)
        if w is None or not w.restarting:
            return
        w.restarting, w.alive = False, True
        self._restarting -= 1
        self.counters[f"restarted_{role}"] += 1
        if isinstance(w, RolloutWorkerState):
            w.version = e.version
            self._request_sync(w)
            self.pool.push(w)

    # -------------------------------------------------------------- scheduling
    def _schedule(self, t: float) -> None:
        self._maybe_train(t)
        self._fill_teachers()
        self._fill_rollout(t)

    def _maybe_train(self, t: float) -> None:
        if self.learner_busy or self.steps_issued >= self.total_steps or self._stop_reason is not None:
            return
        chosen = self.policy.next_batch(self)
        if chosen is None:
            return
        step = self.steps_issued
        for sid in chosen:
            self._unready(self.samples[sid])
        self._step_info = {"step": step, "issued_at": t, "queues": self.queue_depths(), "tokens": self._tokens(chosen)}
        for sid in chosen:
            a = self.samples[sid]
            self._move(a, CONSUMED)
            a.consumed_step, a.consumed_at = step, t
            a.staleness = a.staleness_at(step)
            a.exceeded_cap = self.policy.exceeds_cap(a.staleness)
            self.counters["exceeded_cap"] += int(a.exceeded_cap)
            self._finish(a)
        self.counters["consumed"] += len(chosen)
        self.learner_busy = True
        self.steps_issued += 1
        self._out.append(Train(step, tuple(chosen)))
        self._evict_doomed(self.policy.newly_doomed(self))

    def _fill_teachers(self) -> None:
        if not self._score_queue or self._scoring == len(self.teachers):  # nothing to do / all busy
            return
        if len(self._score_queue) < self.teacher_min_batch and self._status_counts[GENERATING] > 0:
            return  # too few to start a batch, and more are on their way
        for tw in self.teachers.values():
            if not tw.alive or tw.batch_id is not None or not self._score_queue:
                continue
            take = self._scorable_head()
            if not take or (len(take) < self.teacher_min_batch and self._status_counts[GENERATING] > 0):
                return  # (a small batch waits only while more samples are on their way)
            if self._all_scorable:  # (the batch is the head of the queue)
                for _ in take:
                    self._score_queue.popleft()
            else:
                taken = set(take)
                self._score_queue = deque(s for s in self._score_queue if s not in taken)
            batch_id = self._next_score_batch
            self._next_score_batch += 1
            for sid in take:
                a = self.samples[sid]
                self._move(a, SCORING)
                a.score_worker = tw.name
            tw.batch_id, tw.sample_ids = batch_id, tuple(take)
            self._scoring += 1
            self._out.append(Score(batch_id, tuple(take), tw.name))

    def _scorable_head(self) -> list[int]:
        """The first ``teacher_max_batch`` samples of the scoring queue the policy lets a teacher score."""
        if self._all_scorable:
            return list(islice(self._score_queue, self.teacher_max_batch))
        take: list[int] = []
        for sid in self._score_queue:
            if self.policy.scorable(self, self.samples[sid]):
                take.append(sid)
                if len(take) == self.teacher_max_batch:
                    break
        return take

    def _fill_rollout(self, t: float) -> None:
        """Admit while the policy allows, each prompt to the worker the pool offers. The
        policy's admission is monotone in a worker's version and no worker holds a newer
        version than the learner: when the newest accepting worker is refused, everyone is.
        (Admission is a function of the view and the version: a worker holding the learner's
        version gets the decision already made for that version.)"""
        while (newest_decision := self.policy.admission(self, self.version)) is not None:
            w = self.pool.pop_best()
            if w is None:
                return
            decision = newest_decision if w.version == self.version else self.policy.admission(self, w.version)
            if decision is None:
                self.pool.push(w)
                newest = self.pool.newest_accepting()
                if newest.version == w.version:
                    return
                w, decision = newest, self.policy.admission(self, newest.version)
                if decision is None:
                    return
            self._issue(w, self._admit(decision), t)
            self.pool.push(w)

    def _admit(self, decision: Admit) -> Requeued:
        """Carry out an admission: take the re-queued prompt, or number a fresh one."""
        if decision.index is not None:
            item = self._requeue[decision.index]
            del self._requeue[decision.index]
            return item
        prompt = self._next_prompt_id
        self._next_prompt_id += 1
        self.fresh_admitted += 1
        if self._supply is not None:
            self._supply -= 1
        self.counters["prompts_admitted"] += 1
        return prompt, decision.batch, 0

    def _issue(self, w: RolloutWorkerState, item: Requeued, t: float) -> None:
        prompt_id, batch, attempt = item
        sid = self._next_sample_id
        self._next_sample_id += 1
        slot = w.occupy(sid)
        self.samples[sid] = Attempt(sid, prompt_id, attempt, batch, w.name, slot, w.version, t)
        self._live.add(sid)
        self._status_counts[GENERATING] += 1
        self.counters["attempts"] += 1
        self._out.append(Generate(sid, prompt_id, w.name, slot))

    def _request_sync(self, w: RolloutWorkerState) -> None:
        if w.alive and w.syncing_to is None and w.version < self.version:
            w.syncing_to = self.version
            self._syncing += 1
            self._out.append(SyncWeights(w.name, self.version, self.pause_mode))

    # ------------------------------------------------------------ evictions
    def _evict_doomed(self, doomed: Iterable[Attempt]) -> None:
        """Evict what the policy found doomed: at once when it waits, when it surfaces when
        it is with the teacher, and through an abort when it is generating."""
        aborts: dict[str, list[int]] = {}
        for a in doomed:
            if a.status == GENERATING:
                a.doomed = True
                aborts.setdefault(a.worker, []).append(a.sample_id)
            elif a.status == SCORING:
                a.doomed = True
            else:
                self._evict(a, "over_cap")
        for worker, ids in aborts.items():
            self._out.append(AbortGeneration(worker, tuple(ids), "evict"))

    def _evict(self, a: Attempt, reason: str) -> None:
        if a.status == GENERATED:
            self._score_queue.remove(a.sample_id)
            if a.batch is not None:
                self._batch_generated[a.batch] -= 1
        elif a.status == READY:
            self._unready(a)
        self._move(a, EVICTED)
        a.end_reason = reason
        self.counters["evicted"] += 1
        self._finish(a)

    def _abort_and_requeue(self, a: Attempt, reason: str) -> None:
        self._move(a, ABORTED)
        a.end_reason = reason
        self.counters["aborted"] += 1
        self._requeue.append((a.prompt_id, a.batch, a.attempt + 1))
        self._finish(a)

    # ------------------------------------------------------------- helpers
    def _running_attempt(self, sample_id: int, worker: str) -> Attempt | None:
        a = self.samples.get(sample_id)
        w = self.workers.get(worker)
        if a is None or w is None or a.status != GENERATING or a.worker != worker or not w.alive:
            return None  # late or duplicate report (e.g. from a worker declared failed)
        w.release(a.slot)
        self.pool.push(w)
        return a

    def _unready(self, a: Attempt) -> None:
        """Take a ready sample out of the ready queues (it is consumed or evicted)."""
        del self._ready[a.sample_id]
        if a.batch is not None:
            in_batch = self._batch_ready[a.batch]
            del in_batch[a.sample_id]
            if not in_batch:
                del self._batch_ready[a.batch]

    def _move(self, a: Attempt, status: str) -> None:
        self._status_counts[a.status] -= 1
        if status not in TERMINAL:
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

    def _emit_span(self, name: str, worker: str, lane: int, start: float, end: float, args: dict[str, Any]) -> None:
        if self.observer:
            self.observer.on_span(name, worker, lane, start, end, args)

    def _stop(self, ok: bool, reason: str, t: float) -> None:
        self.done, self.ok, self.stop_reason = True, ok, reason
        for sid in sorted(self._live):
            a = self.samples[sid]
            self._move(a, UNFINISHED)
            a.end_reason = "run_stopped"
            self._finish(a)
        self._ready.clear()
        self._batch_ready.clear()
        for w in self.workers.values():
            w.release_all()
        self._out.append(Stop(ok, reason))
        if self.observer:
            self.observer.on_stop({"ok": ok, "reason": reason, "t_end": t, "version": self.version,
                                   "counters": dict(self.counters), "policy": self.policy.describe()})

    # event type -> handler; functions, not bound methods, so that a controller holds no
    # reference to itself and is freed as soon as its driver lets go of it
    _HANDLERS: dict[type, Callable[[Controller, Any], None]] = {
        RunStarted: _on_run_started,
        PromptsAvailable: _on_prompts,
        GenerationFinished: _on_generation_finished,
        GenerationAborted: _on_generation_aborted,
        ScoringFinished: _on_scoring_finished,
        TrainStepFinished: _on_train_finished,
        WeightSyncFinished: _on_sync_finished,
        WorkerFailed: _on_worker_failed,
        WorkerRestarted: _on_worker_restarted,
        StopRequested: _on_stop_requested,
    }
