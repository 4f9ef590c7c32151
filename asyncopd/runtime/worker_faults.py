"""Worker deaths and restarts in the real trainer.

Ray restarts a dead rollout or teacher actor by itself (``max_restarts = run.worker_restarts``,
re-running its constructor, which reloads the run's initial student or the teacher). The
driver's part:

1. notice: a call to the worker fails with ``RayActorError``;
2. tell the controller (``WorkerFailed``, ``restarting`` while the worker has restarts left),
   which re-queues the worker's in-flight generations or scoring batch;
3. wait for the fresh process: its ``ready`` call answers once Ray has restarted it;
4. bring it up to date: a rollout worker on ``sync.method: collective`` rejoins its weight
   channel with the learner;
5. tell the controller it is back (``WorkerRestarted``, holding version 0's weights); the
   controller syncs a rollout worker to the newest version before it generates.

Each worker has an *incarnation*, bumped at each death. Every call records the incarnation it
was sent to, and an answer or failure from an older incarnation is dropped: its work was
re-queued when the death was noticed. So one death is handled once however many calls it
failed, and a late answer from the dead process cannot touch the fresh one's state.

The learner is not restarted: its state (weights, optimizer) lives only in it and in the
checkpoints. When it dies (or an update fails) the run stops at once, not ok, naming the
checkpoint ``asyncopd train --resume`` would continue from.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncopd.runtime.calls import FreshProcessError, Pending

log = logging.getLogger("asyncopd.train")

LEARNER = "learner-0"


@dataclass
class WorkerLives:
    """Incarnations, restart budgets and recoveries of the restartable workers. With ``log``
    (``RUN_DIR/faults.jsonl``), each death, return and lost learner is appended as it happens
    (a line survives the driver being killed; ``bench/chaos.py`` reads them)."""

    restarts: int
    log: Path | None = None
    incarnation: dict[str, int] = field(default_factory=dict)
    restarts_left: dict[str, int] = field(default_factory=dict)
    died_at: dict[str, float] = field(default_factory=dict)
    probes: dict[str, float] = field(default_factory=dict)  # restarting worker -> when (monotonic) to ask if it is back
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    learner_lost: str | None = None  # why the learner failed (the run stops)

    def add(self, workers: Any) -> None:
        for w in workers:
            self.incarnation.setdefault(w, 0)
            self.restarts_left.setdefault(w, self.restarts)

    def current(self, worker: str, incarnation: int) -> bool:
        """Whether a call sent to ``incarnation`` of ``worker`` is from its live process."""
        return self.incarnation.get(worker, 0) == incarnation

    def died(self, worker: str, now: float) -> bool:
        """``worker``'s current process died at ``now``; True when a restart is coming (one of
        its restarts is used)."""
        self.incarnation[worker] = self.incarnation.get(worker, 0) + 1
        self.died_at.setdefault(worker, now)  # (a failed restart keeps the first death's time)
        restarting = self.restarts_left.get(worker, 0) > 0
        self.restarts_left[worker] -= int(restarting)
        self.note({"event": "died", "worker": worker, "t": round(now, 3), "restarting": restarting})
        return restarting

    def back(self, worker: str, now: float) -> float:
        """``worker`` answered as a fresh process; returns the seconds since it died."""
        died = self.died_at.pop(worker, now)
        self.recoveries.append({"worker": worker, "died_at": round(died, 3), "back_at": round(now, 3),
                                "recovery_s": round(now - died, 3)})
        self.note({"event": "back", **self.recoveries[-1]})
        return now - died

    def note(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` records under ``faults``."""
        return {"restarts": self.recoveries, "restarts_left": dict(self.restarts_left),
                "still_down": sorted(self.died_at), **({"learner_lost": self.learner_lost} if self.learner_lost else {})}


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


RESTARTING = ("RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY")


def actor_state(handle: Any) -> str | None:
    """The GCS's state of an actor (``ALIVE``, ``RESTARTING``, ``DEAD``...), or None where this
    Ray does not say. Asking the GCS (``ray._private.state``, Ray's own internal accessor: the
    public state API needs the dashboard) tells within ~50 ms when a restarted actor is up; a
    ``ready`` call sent while it restarts fails only after ~2 s (measured with Ray 2.60), which
    delayed every recovery by up to that much."""
    try:
        from ray._private.state import state

        return state.actor_table(handle._actor_id.hex())["State"]
    except (ImportError, AttributeError, KeyError, TypeError):
        return None


class FaultHandling:
    """The ``RayDriver`` methods that handle failed calls and restarts (a mixin: they use the
    driver's actors, queues and controller)."""

    lives: WorkerLives
    pending: dict[Any, Pending]

    def _ask_restarting_workers(self, wait: float = 600.0) -> float:
        """Send the due ``ready`` probes to restarting workers; returns how long the driver may
        wait for an answer before the next probe is due (at most ``wait``). With nothing in
        flight but probes to come, sleeps until the first is due."""
        probes = self.lives.probes
        while probes:
            now = time.monotonic()
            for worker in [w for w, due in probes.items() if due <= now]:
                if actor_state(self.handles_by_name[worker]) in RESTARTING:
                    probes[worker] = now + 0.05  # (a call to a restarting actor fails only after ~2 s)
                    continue
                del probes[worker]
                self._submit(self.handles_by_name[worker].ready.remote(), Pending("restart", worker))
            if self.pending or not probes:
                break
            time.sleep(max(0.0, min(probes.values()) - now))
        return min([wait, *(max(0.0, due - time.monotonic()) for due in probes.values())])

    def _call_failed(self, p: Pending, error: Exception) -> None:
        """A call raised. A rollout or teacher worker's process died: tell the controller,
        and start waiting for its restart. The learner's update failed or it died: stop."""
        import ray

        from asyncopd.control import messages  # (lazy: only on a failure)

        first = _first_line(error)
        if p.kind == "serve":  # the learner's half of a collective sync
            if isinstance(error, ray.exceptions.RayActorError):
                self._learner_failed(error)
            else:  # its peer died mid-broadcast; the worker's own call reports that
                log.warning("serving version %d to %s failed: %s", *p.context, first)
            return
        if p.kind == "train" or p.worker == LEARNER:
            self._learner_failed(error)
            return
        fresh = isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, FreshProcessError)
        if not (fresh or isinstance(error, ray.exceptions.RayActorError)):
            raise error  # the worker is alive and its call failed: a bug, not a fault to ride out
        if not self.lives.current(p.worker, p.incarnation):
            return  # (this death was already handled)
        if p.kind == "restart":
            if isinstance(error, ray.exceptions.ActorUnavailableError):  # (still restarting: ask again soon)
                log.debug("%s: still restarting at %.2f s (%s)", p.worker, self._now(), first)
                self.lives.probes[p.worker] = time.monotonic() + 0.2
                return
            self.lives.restarts_left[p.worker] = 0  # Ray gave up on it (its constructor failed, or no restarts left)
        restarting = self.lives.died(p.worker, self._now())
        self._forget_work_of(p.worker)
        if restarting:
            self.lives.probes[p.worker] = time.monotonic()
        log.warning("%s died (%s); %s", p.worker, first,
                    f"restarting it ({self.lives.restarts_left[p.worker]} restarts left after this one)"
                    if restarting else "no restarts left (run.worker_restarts)")
        self.recorder.summary_extra["faults"] = self.lives.summary()
        self._send(messages.WorkerFailed(self._now(), p.worker, first, restarting=restarting))

    def _forget_work_of(self, worker: str) -> None:
        """Drop the driver's copy of what a dead rollout worker was generating (the controller
        re-queues those prompts as new attempts)."""
        q = self.queues.get(worker)
        if q is None:
            return
        for sid in [r.sample_id for r in q.waiting] + sorted(q.in_wave):
            self.samples.pop(sid, None)
        q.waiting, q.in_wave, q.collecting = [], set(), False

    def _on_restart(self, p: Pending, value: Any) -> None:
        """A dead worker's fresh process answered ``ready``: bring it up to date and tell the controller."""
        import ray

        from asyncopd.control import messages  # (lazy: only on a failure)

        if p.worker in self.rollout:
            try:
                self.syncs.rejoin(p.worker)
            except ray.exceptions.RayActorError as e:  # it died again meanwhile
                self._call_failed(Pending("rejoin", p.worker, incarnation=p.incarnation), e)
                return
        took = self.lives.back(p.worker, self._now())
        log.warning("%s is back after %.1f s (pid %s)", p.worker, took, value.get("pid"))
        self.recorder.summary_extra["faults"] = self.lives.summary()
        self._send(messages.WorkerRestarted(self._now(), p.worker, version=0))

    def _learner_failed(self, error: Exception) -> None:
        from asyncopd.control import messages  # (lazy: only on a failure)
        from asyncopd.runtime import checkpoints  # (lazy: only on a failure)

        log.error("the learner failed: %s", error)
        first = _first_line(error)
        newest = checkpoints.newest_checkpoint(self.run_dir)
        hint = (f"`asyncopd train --resume {self.run_dir}` continues from {newest.path.name}" if newest is not None
                else "no checkpoint was saved yet (run.checkpoint_every)")
        self.lives.learner_lost = first
        self.lives.note({"event": "learner_lost", "worker": LEARNER, "t": round(self._now(), 3), "error": first})
        self.recorder.summary_extra["faults"] = self.lives.summary()
        self._send(messages.WorkerFailed(self._now(), LEARNER, f"{first}; {hint}"))


__all__ = ["FaultHandling", "LEARNER", "WorkerLives"]
