"""Driver 2: the real trainer. Ray actors do the work; the shared ``Controller`` decides.

The loop: ``ray.wait`` for the next finished call, turn its result into controller events (with
wall-clock times relative to the run start), dispatch the actions the controller returns (a
failed call: ``worker_faults.py``). Sample payloads (token ids, behaviour logprobs, teacher
top-k) stay in the driver between stages. Weights go learner → object store → rollout workers
(``sync.method: object_store``), or learner → a two-rank torch.distributed group → each rollout
worker (``collective``), tagged with their version; ``sync.verify`` compares both ends' hashes.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from asyncopd.backends.base import GenRequest, GenResult, ScoreRequest, TeacherPayload, TrainItem
from asyncopd.config.schema import OPDConfig
from asyncopd.control import messages
from asyncopd.control.controller import Controller
from asyncopd.runtime import checkpoints
from asyncopd.runtime.calls import Pending
from asyncopd.runtime.cpu_accounting import CpuAccount
from asyncopd.runtime.rollout_calls import EXCHANGE, RolloutCalls, WorkerQueue
from asyncopd.runtime.setup import ResolvedModels, resolve_models, start_actors, start_ray
from asyncopd.runtime.sync_orchestration import WeightSyncs
from asyncopd.runtime.worker_faults import FaultHandling, WorkerLives
from asyncopd.task import BuiltinTask, CharCodec
from asyncopd.trace.setup import start_run
from asyncopd.trace.efficiency import add_to_summary as add_efficiency

log = logging.getLogger("asyncopd.train")


@dataclass
class SampleData:
    request: GenRequest
    result: GenResult | None = None
    teacher: TeacherPayload | None = None


class RayDriver(FaultHandling, RolloutCalls):
    def __init__(self, cfg: OPDConfig, run_dir: str | Path, *, progress: bool = True,
                 models: ResolvedModels | None = None, evaluate: bool = True, resume: bool = False) -> None:
        self.cfg, self.progress, self.run_dir = cfg, progress, Path(run_dir)
        # resume: continue run_dir from its newest complete checkpoint (checked before anything starts)
        self.resume_from = checkpoints.find_resume_checkpoint(self.run_dir, cfg) if resume else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.models = models or resolve_models(cfg, progress=progress)
        self.task, self.codec = BuiltinTask(cfg.task, seed=cfg.run.seed), self.models.codec
        self.samples: dict[int, SampleData] = {}
        self.pending: dict[Any, Pending] = {}  # (Ray object ref -> the call it answers)
        self.queues: dict[str, WorkerQueue] = {}
        self._hold_waves = 0  # > 0 while the actions caused by one event are being dispatched
        self._after_waves: list[Any] = []  # score and train calls, submitted after the waves start
        self.syncs, self.t0 = WeightSyncs(cfg), 0.0
        self.lives = WorkerLives(cfg.run.worker_restarts, self.run_dir / "faults.jsonl")
        # Held-out accuracy before and after: only where the task's checker applies (built-in codec).
        self.evaluates = evaluate and isinstance(self.codec, CharCodec)
        self.eval_start: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _start_actors(self) -> None:
        import ray

        self.actors = started = start_actors(self.cfg, self.models)
        self.rollout, self.teachers, self.learner = started.rollout, started.teachers, started.learner
        placement = started.wait_ready()
        self.learner.form("nccl" if self.cfg.cluster.device_type == "cuda" else "gloo", self.cfg.sync.timeout_s)
        self.syncs.attach(self.learner.lead, self.rollout)
        self.queues = {w: WorkerQueue() for w in self.rollout}
        self.handles_by_name = started.handles()
        self.lives.add([*self.rollout, *self.teachers])
        self._placement = placement
        if self.evaluates:
            self.eval_start = ray.get(self._evaluate())

    def _make_controller(self) -> Controller:
        self.recorder, ctrl = start_run(
            self.cfg, self.run_dir, driver="ray", clock="wall", slots_per_worker=self.cfg.rollout.max_num_seqs,
            seed=self.cfg.run.seed, extra_meta={
                "placement": self._placement,
                "models": {"student": str(self.models.student), "teacher": str(self.models.teacher)}},
            resume=self.resume_from.info if self.resume_from is not None else None)
        self.recorder.summary_extra.update(self.syncs.summary(), learner_ranks=self.learner.world,
                                           learner_strategy=self.cfg.learner.strategy, faults=self.lives.summary())
        if self.resume_from is not None:
            self.recorder.summary_extra["resume"].update(
                checkpoint=str(self.resume_from.path), next_prompt_id=self.resume_from.info["next_prompt_id"],
                skipped_prompts=len(self.resume_from.info.get("skipped_prompts", [])))
        return ctrl

    def _prepare_checkpoints(self) -> None:
        """Clean what a crash mid-save left, tell the learner when to save, and on resume load
        the checkpoint into the learner and every rollout worker."""
        import ray

        checkpoints.clean_leftovers(self.run_dir)
        run = self.cfg.run
        ray.get(self.learner.call("configure_checkpoints", str(self.run_dir / checkpoints.CHECKPOINTS),
                                  run.checkpoint_every, run.total_steps, str(self.models.student)))
        ck = self.resume_from
        if ck is None:
            return
        try:
            version, published = ray.get(self.learner.call("load_checkpoint", str(ck.path)))
        except ray.exceptions.RayTaskError as e:  # (a damaged trainer_state.pt: bad input, one line)
            raise ValueError(f"{ck.path / checkpoints.STATE_FILE}: cannot load it ({e.cause!r})") from None
        if version != ck.version:
            raise RuntimeError(f"{ck.path}: trainer_state.pt holds version {version}, resume.json says {ck.version}")
        self.syncs.published(version, published)
        answers = ray.get([self._start_sync(w, version, self.cfg.pipeline.pause_mode) for w in self.rollout])
        for worker, answer in zip(self.rollout, answers):
            self.syncs.check(worker, version, answer[3])
        log.info("resuming %s from %s (version %d, prompts from %d)", self.run_dir, ck.path, version,
                 ck.info["next_prompt_id"])

    def _resume_info(self, version: int) -> dict[str, Any]:
        """``resume.json`` of a checkpoint at ``version``: the controller's resume point (taken
        while every consumed sample belongs to an update the checkpoint holds), and what the
        run was."""
        point = self.ctrl.resume_point()
        if point["version"] != version:
            raise RuntimeError(f"checkpoint at version {version} but the controller issued {point['version']} updates")
        return {**point, "step": version, "elapsed_s": self._now(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "policy": self.ctrl.policy.describe(),
                "batch_size": self.cfg.learner.batch_size, "seed": self.cfg.run.seed,
                "task": self.cfg.task.model_dump(mode="json"), "student": str(self.models.student)}

    # -------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        import ray

        started_ray = start_ray(self.cfg)
        try:
            self._start_actors()
            self._prepare_checkpoints()
            self.ctrl = self._make_controller()
            self._bar = tqdm(total=self.cfg.run.total_steps, initial=self.ctrl.version, desc="train", unit="step",
                             disable=not self.progress)
            self.t0 = time.time() - self.recorder.t_origin  # (a resumed run's clock goes on)
            self._cpu = cpu = CpuAccount()
            try:
                t_start = self.recorder.t_origin  # (0 unless resumed)
                self._send(messages.RunStarted(t_start))
                self._send(messages.PromptsAvailable(t_start, None))
                budget, stop_sent = self.cfg.run.time_budget_s, False
                while not self.ctrl.done:
                    if budget is not None and not stop_sent and self._now() - t_start >= budget:
                        self._send(messages.StopRequested(self._now(), f"run.time_budget_s={budget:g} reached"))
                        stop_sent = True
                        continue
                    self._wait_one()
                cpu.write(self.run_dir / "summary.json")
                add_efficiency(self.run_dir)  # (the recorder closed its files at the stop)
            except BaseException as exc:
                if not self.ctrl.done:  # crash: keep what was recorded, mark the run failed
                    self.recorder.on_stop({"ok": False, "reason": f"driver crashed: {exc!r}", "t_end": self._now(),
                                           "version": self.ctrl.version, "counters": dict(self.ctrl.counters),
                                           "policy": self.ctrl.policy.describe()})
                raise
            finally:
                self._bar.close()
            if self.lives.learner_lost is None:
                self._finish()
        finally:
            self.recorder.close() if hasattr(self, "recorder") else None
            if getattr(self, "actors", None) is not None:
                self.actors.stop()
            if started_ray:
                ray.shutdown()
        return json.loads((self.run_dir / "summary.json").read_text())

    def _now(self) -> float:
        return time.time() - self.t0

    def _rel(self, t: float) -> float:
        return t - self.t0

    def _wait_one(self) -> None:
        import ray

        timeout = self._ask_restarting_workers()  # (worker_faults.py)
        if not self.pending:
            raise RuntimeError(f"nothing in flight and the run is not done: {self.ctrl.describe_state()}")
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready and timeout < 600:
            return  # (a restarting worker is due to be asked again)
        if not ready:
            raise TimeoutError(f"no worker answered for 600 s; in flight: {sorted({p.worker for p in self.pending.values()})}")
        p = self.pending.pop(ref := ready[0])
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as e:
            self._call_failed(p, e)
            return
        if not self.lives.current(p.worker, p.incarnation):
            return  # the answer of a process that has died since: its work was re-queued
        if p.context != EXCHANGE:  # (an exchange's answer did not start when the call was submitted)
            self._cpu.calls.answered(p.kind, p.issued, value, self.t0)
        with self._cpu.handling(p.kind, len(value) if p.kind == "gen" else 1), self._waves_after_dispatch():
            getattr(self, f"_on_{p.kind}")(p, value)

    def _send(self, event: messages.Event) -> None:
        with self._waves_after_dispatch():
            for action in self.ctrl.handle(event):
                self._dispatch(action)

    @contextmanager
    def _waves_after_dispatch(self) -> Iterator[None]:
        """Start rollout waves once every action of the current event (or answer) is dispatched, so
        requests admitted together leave as one wave, as simulated (else: 77 one-sample waves in a
        1000-step default run); then submit its teacher and learner calls (a wave waits less)."""
        self._hold_waves += 1
        try:
            yield
        finally:
            self._hold_waves -= 1
            if self._hold_waves == 0:
                for worker in self.queues:
                    self._start_wave(worker)
                later, self._after_waves = self._after_waves, []
                for submit in later:
                    submit()

    def _submit(self, ref: Any, p: Pending) -> None:
        p.issued, p.incarnation = self._now(), self.lives.incarnation.get(p.worker, 0)
        self.pending[ref] = p

    # --------------------------------------------------------------- actions
    def _dispatch(self, a: messages.Action) -> None:
        if isinstance(a, messages.Generate):
            problem = self.task.problem(a.prompt_id)
            req = GenRequest(a.sample_id, a.prompt_id, self.codec.encode_prompt(problem.prompt_text))
            self.samples[a.sample_id] = SampleData(req)
            self.queues[a.worker].waiting.append(req)  # the wave starts in _waves_after_dispatch
        elif isinstance(a, messages.AbortGeneration):
            q = self.queues[a.worker]
            queued = [r for r in q.waiting if r.sample_id in a.sample_ids]
            q.waiting = [r for r in q.waiting if r.sample_id not in a.sample_ids]
            for r in queued:
                self.samples.pop(r.sample_id, None)
                self._send(messages.GenerationAborted(self._now(), r.sample_id, a.worker, self._now(), 0, a.reason))
            live = [s for s in a.sample_ids if s in q.in_wave]
            if live:
                self.rollout[a.worker].abort.remote(live)
        elif isinstance(a, messages.Score):
            self._after_waves.append(lambda: self._submit(self.teachers[a.worker].score.remote(
                [self._score_request(sid) for sid in a.sample_ids]), Pending("score", a.worker, a)))
        elif isinstance(a, messages.Train):
            self._after_waves.append(lambda: self._submit(self.learner.train(
                a.step, [self._train_item(sid) for sid in a.sample_ids]), Pending("train", "learner-0", a)))
        elif isinstance(a, messages.SyncWeights):
            self._submit(self._start_sync(a.worker, a.version, a.pause_mode), Pending("sync", a.worker, a))
        elif isinstance(a, messages.Stop):
            log.info("stop: %s", a.reason)

    def _score_request(self, sid: int) -> ScoreRequest:
        """Teacher input for one sample, with the ids the loss wants ``log p_T`` at."""
        r = self.samples[sid].result
        assert r is not None
        query, wanted = None, self.cfg.algorithm.spec.teacher_query
        if wanted is not None:
            if r.capture is None:
                raise RuntimeError(f"sample {sid}: the rollout returned no capture, but loss "
                                   f"{self.cfg.algorithm.loss} needs its {wanted} ids")
            query = r.capture.topk_ids if wanted == "rollout_topk" else r.capture.mc_ids
        return ScoreRequest(sid, r.prompt_ids, r.response_ids, query)

    def _train_item(self, sid: int) -> TrainItem:
        s = self.samples.pop(sid)
        r, t = s.result, s.teacher
        assert r is not None and t is not None
        return TrainItem(r.prompt_ids, r.response_ids, r.behaviour_logprobs, r.token_versions, t, r.capture)

    # ---------------------------------------------------------------- results
    def _on_gen(self, p: Pending, results: list[GenResult]) -> None:
        """Deliver a finished wave (or a continuous worker's exchange). The next wave starts
        only after every result has reached the controller (``_waves_after_dispatch``), so it
        takes all the slots they free."""
        self._delivered(p.worker, results)
        now = self._now()
        for r in results:
            sd = self.samples.get(r.sample_id)
            if sd is None:
                continue
            started, ended = self._rel(r.started_at), self._rel(r.finished_at)
            if r.status == "aborted":
                self.samples.pop(r.sample_id, None)
                self._send(messages.GenerationAborted(now, r.sample_id, p.worker, started, len(r.response_ids),
                                                      r.abort_reason or "evict", ended_at=ended))
                continue
            sd.result = r
            ids = r.response_ids
            text = self.codec.decode(ids[: ids.index(self.codec.eos_id)] if self.codec.eos_id in ids else ids)
            self.recorder.annotate(r.sample_id, correct=self.task.is_correct(self.task.problem(r.prompt_id), text),
                                   finish_reason=r.finish_reason)
            self._send(messages.GenerationFinished(now, r.sample_id, p.worker, started, r.spans(),
                                                   len(r.prompt_ids), ended_at=ended, wave_cpu_s=r.wave_cpu_s, cpu_s=r.cpu_s))

    def _on_score(self, p: Pending, value: tuple[list[TeacherPayload], float, float, float | None]) -> None:
        payloads, started, _, cpu = value
        for pl in payloads:
            if pl.sample_id in self.samples:
                self.samples[pl.sample_id].teacher = pl
            self.recorder.annotate(pl.sample_id, teacher_cache_bytes=pl.nbytes)
        self._send(messages.ScoringFinished(self._now(), p.context.batch_id, p.worker, self._rel(started), cpu))

    def _start_sync(self, worker: str, version: int, pause_mode: str) -> Any:
        return self.syncs.start(worker, version, pause_mode,
                                track=lambda ref: self._submit(ref, Pending("serve", "learner-0", (version, worker))))

    def _on_serve(self, p: Pending, value: tuple[float, float]) -> None:
        """The learner's half of a collective sync finished (the worker's half reports the sync)."""

    def _on_train(self, p: Pending, value: tuple[dict[str, float], dict[str, Any], float, float]) -> None:
        metrics, published, started, _ = value
        step = p.context.step
        self.syncs.published(step + 1, published)
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}")
        saved = self._periodic_checkpoint(step + 1)  # (its resume point: before the controller moves on)
        self._send(messages.TrainStepFinished(self._now(), step, self._rel(started), metrics))
        if saved is not None:  # committed once log.jsonl holds its step
            checkpoints.commit(*saved)
            checkpoints.prune(self.run_dir, self.cfg.run.keep_checkpoints)

    def _periodic_checkpoint(self, version: int) -> tuple[Path, str, dict[str, Any]] | None:
        """The checkpoint the learner wrote after the update that reached ``version``, if due."""
        run = self.cfg.run
        if not (run.checkpoint_every > 0 and version % run.checkpoint_every == 0 and version < run.total_steps):
            return None
        tmp = checkpoints.tmp_dir(self.run_dir / checkpoints.CHECKPOINTS, checkpoints.step_name(version))
        if not (tmp / checkpoints.STATE_FILE).is_file():
            log.warning("checkpoint for version %d is missing (%s)", version, tmp)
            return None
        return tmp, checkpoints.step_name(version), self._resume_info(version)

    def _on_sync(self, p: Pending, value: tuple[float, float, float | None, str | None]) -> None:
        started, _, paused, digest = value
        self.syncs.check(p.worker, p.context.version, digest)
        self.recorder.summary_extra.update(self.syncs.summary())
        self._send(messages.WeightSyncFinished(self._now(), p.worker, p.context.version, self._rel(started),
                                               paused_s=paused))

    def _evaluate(self) -> Any:
        return self.learner.call("evaluate", self.cfg.task.model_dump(), self.cfg.run.seed, str(self.models.student))

    def _finish(self) -> None:
        """After the controller stopped: save (and evaluate) the final student."""
        import ray

        self.pending.clear()
        tmp = checkpoints.tmp_dir(self.run_dir / checkpoints.CHECKPOINTS, checkpoints.FINAL)
        info = self._resume_info(self.ctrl.steps_issued)
        saved = ray.get(self.learner.call("write_checkpoint", str(tmp), str(self.models.student)))
        if saved["version"] != info["version"]:  # (the run stopped while an update was failing)
            log.warning("final checkpoint: the learner is at version %d, the controller issued %d updates",
                        saved["version"], info["version"])
            info.update(version=saved["version"], step=saved["version"])
        checkpoints.commit(tmp, checkpoints.FINAL, info)
        if self.evaluates:
            end = ray.get(self._evaluate())
            path = self.run_dir / "summary.json"
            summary = json.loads(path.read_text())
            summary.update(accuracy=end["accuracy"], accuracy_start=self.eval_start.get("accuracy"),
                           eval_start=self.eval_start, eval_end=end)
            path.write_text(json.dumps(summary, indent=2))


def train(cfg: OPDConfig | None, run_dir: str | Path, *, progress: bool = True, evaluate: bool = True,
          resume: bool = False) -> dict[str, Any]:
    """Run the real trainer on ``cfg`` into ``run_dir``; return the run summary (with held-out
    accuracy of the student before and after, on the built-in task, unless ``evaluate=False``).

    ``resume=True`` continues the run in ``run_dir`` from its newest complete checkpoint
    (``cfg=None``: with the run's own ``config.yaml``); see ``docs/trace-format.md``."""
    if cfg is None:
        if not resume:
            raise ValueError("train: give a config (cfg=None is only for resume=True)")
        cfg = checkpoints.resume_config(run_dir)
    return RayDriver(cfg, run_dir, progress=progress, evaluate=evaluate, resume=resume).run()
