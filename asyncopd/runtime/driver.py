"""Driver 2: the real trainer. Ray actors do the work; the shared ``Controller`` decides.

The loop is: ``ray.wait`` for the next finished call, turn its result into controller
events (with wall-clock times relative to the run start), dispatch the actions the
controller returns. Sample payloads (token ids, behaviour logprobs, teacher top-k) stay in
the driver between stages; they are small for the models this runs on a CPU. Weights go
learner → object store → rollout workers, tagged with their version.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asyncopd.backends.base import GenRequest, GenResult, TeacherPayload, TrainItem
from asyncopd.config.schema import OPDConfig
from asyncopd.control import messages as M
from asyncopd.control.controller import Controller
from asyncopd.runtime.setup import ResolvedModels, resolve_models, start_ray
from asyncopd.trace.setup import start_run

log = logging.getLogger("asyncopd.train")


@dataclass
class SampleData:
    request: GenRequest
    result: GenResult | None = None
    teacher: TeacherPayload | None = None


@dataclass
class Pending:
    kind: str  # gen | score | train | sync
    worker: str
    context: Any = None
    issued: float = 0.0


@dataclass
class WorkerQueue:
    """Requests the controller assigned to a rollout worker while its previous wave runs."""

    waiting: list[GenRequest] = field(default_factory=list)
    in_wave: set[int] = field(default_factory=set)
    delivering: bool = False  # handing a finished wave's results to the controller: hold the next wave


class RayDriver:
    def __init__(self, cfg: OPDConfig, run_dir: str | Path, *, progress: bool = True,
                 models: ResolvedModels | None = None, evaluate: bool = True) -> None:
        self.cfg, self.progress = cfg, progress
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.models = models or resolve_models(cfg, progress=progress)
        from asyncopd.task import BuiltinTask

        self.task = BuiltinTask(cfg.task, seed=cfg.run.seed)
        self.codec = self.models.codec
        self.samples: dict[int, SampleData] = {}
        self.pending: dict[Any, Pending] = {}
        self.queues: dict[str, WorkerQueue] = {}
        self.weights: dict[int, list[Any]] = {}
        self.t0 = 0.0
        # Held-out accuracy before and after: only where the task's checker applies (built-in codec).
        from asyncopd.task import CharCodec

        self.evaluates = evaluate and isinstance(self.codec, CharCodec)
        self.eval_start: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _start_actors(self) -> None:
        import ray

        from asyncopd.runtime import actors

        cfg, lay = self.cfg, self.cfg.layout
        dt, dtype = cfg.cluster.device_type, cfg.models.dtype
        gpu = 1.0 / max(1, lay.rollout.workers + lay.teacher.workers + 1) if dt == "cuda" else 0
        opts = {"num_cpus": 0, "num_gpus": gpu}
        Rollout = ray.remote(actors.RolloutWorker).options(max_concurrency=4, **opts)
        Teacher = ray.remote(actors.TeacherWorker).options(**opts)
        Learner = ray.remote(actors.LearnerWorker).options(**opts)
        self.rollout = {
            f"rollout-{i}": Rollout.remote(
                f"rollout-{i}", str(self.models.student), device_type=dt, devices=lay.rollout.devices,
                eos_id=self.codec.eos_id, pad_id=self.codec.pad_id, max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=cfg.run.seed * 1000 + i, dtype=dtype)
            for i in range(lay.rollout.workers)
        }
        self.teachers = {
            f"teacher-{i}": Teacher.remote(f"teacher-{i}", str(self.models.teacher), device_type=dt,
                                           devices=lay.teacher.devices, top_k=cfg.teacher.top_k,
                                           pad_id=self.codec.pad_id, dtype=dtype)
            for i in range(lay.teacher.workers)
        }
        lc = cfg.learner
        self.learner = Learner.remote(str(self.models.student), device_type=dt, devices=lay.learner.devices, lr=lc.lr,
                                      weight_decay=lc.weight_decay, grad_clip=lc.grad_clip,
                                      micro_batch_size=lc.micro_batch_size, warmup_steps=lc.warmup_steps, dtype=dtype)
        handles = {**self.rollout, **self.teachers, "learner-0": self.learner}
        placement = dict(zip(handles, ray.get([h.ready.remote() for h in handles.values()])))
        self.queues = {w: WorkerQueue() for w in self.rollout}
        self._placement = placement
        if self.evaluates:
            self.eval_start = ray.get(self._evaluate())

    def _make_controller(self) -> Controller:
        self.recorder, ctrl = start_run(
            self.cfg, self.run_dir, driver="ray", clock="wall", slots_per_worker=self.cfg.rollout.max_num_seqs,
            seed=self.cfg.run.seed, extra_meta={
                "placement": self._placement,
                "models": {"student": str(self.models.student), "teacher": str(self.models.teacher)}})
        return ctrl

    # -------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        import ray

        started_ray = start_ray(self.cfg)
        try:
            self._start_actors()
            self.ctrl = self._make_controller()
            self._bar = tqdm(total=self.cfg.run.total_steps, desc="train", unit="step", disable=not self.progress)
            self.t0 = time.time()
            try:
                self._send(M.RunStarted(0.0))
                self._send(M.PromptsAvailable(0.0, None))
                while not self.ctrl.done:
                    self._wait_one()
            except BaseException as exc:
                if not self.ctrl.done:  # crash: keep what was recorded, mark the run failed
                    self.recorder.on_stop({"ok": False, "reason": f"driver crashed: {exc!r}", "t_end": self._now(),
                                           "version": self.ctrl.version, "counters": dict(self.ctrl.counters),
                                           "policy": self.ctrl.policy.describe()})
                raise
            finally:
                self._bar.close()
            self._finish()
        finally:
            self.recorder.close() if hasattr(self, "recorder") else None
            if started_ray:
                ray.shutdown()
        return json.loads((self.run_dir / "summary.json").read_text())

    def _now(self) -> float:
        return time.time() - self.t0

    def _rel(self, t: float) -> float:
        return t - self.t0

    def _wait_one(self) -> None:
        import ray

        if not self.pending:
            raise RuntimeError(f"nothing in flight and the run is not done: {self.ctrl.describe_state()}")
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=600)
        if not ready:
            raise TimeoutError(f"no worker answered for 600 s; in flight: {sorted({p.worker for p in self.pending.values()})}")
        ref = ready[0]
        p = self.pending.pop(ref)
        try:
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            if p.kind == "train" or not isinstance(e, ray.exceptions.RayActorError):
                raise
            self._send(M.WorkerFailed(self._now(), p.worker, str(e).splitlines()[0]))
            return
        getattr(self, f"_on_{p.kind}")(p, value)

    def _send(self, event: M.Event) -> None:
        for action in self.ctrl.handle(event):
            self._dispatch(action)

    def _submit(self, ref: Any, p: Pending) -> None:
        p.issued = self._now()
        self.pending[ref] = p

    # --------------------------------------------------------------- actions
    def _dispatch(self, a: M.Action) -> None:
        if isinstance(a, M.Generate):
            problem = self.task.problem(a.prompt_id)
            req = GenRequest(a.sample_id, a.prompt_id, self.codec.encode_prompt(problem.prompt_text))
            self.samples[a.sample_id] = SampleData(req)
            self.queues[a.worker].waiting.append(req)
            self._start_wave(a.worker)
        elif isinstance(a, M.AbortGeneration):
            q = self.queues[a.worker]
            queued = [r for r in q.waiting if r.sample_id in a.sample_ids]
            q.waiting = [r for r in q.waiting if r.sample_id not in a.sample_ids]
            for r in queued:
                self.samples.pop(r.sample_id, None)
                self._send(M.GenerationAborted(self._now(), r.sample_id, a.worker, self._now(), 0, a.reason))
            live = [s for s in a.sample_ids if s in q.in_wave]
            if live:
                self.rollout[a.worker].abort.remote(live)
        elif isinstance(a, M.Score):
            items = [(sid, self.samples[sid].request.prompt_ids, self.samples[sid].result.response_ids)  # type: ignore[union-attr]
                     for sid in a.sample_ids]
            self._submit(self.teachers[a.worker].score.remote(items), Pending("score", a.worker, a))
        elif isinstance(a, M.Train):
            batch = [self._train_item(sid) for sid in a.sample_ids]
            self._submit(self.learner.train.remote(a.step, batch), Pending("train", "learner-0", a))
        elif isinstance(a, M.SyncWeights):
            ref = self.rollout[a.worker].load_weights.remote(self.weights[a.version], a.version, a.pause_mode)
            self._submit(ref, Pending("sync", a.worker, a))
        elif isinstance(a, M.Stop):
            log.info("stop: %s", a.reason)

    def _start_wave(self, worker: str) -> None:
        q = self.queues[worker]
        if q.in_wave or q.delivering or not q.waiting:
            return
        wave, q.waiting = q.waiting, []
        q.in_wave = {r.sample_id for r in wave}
        self._submit(self.rollout[worker].generate.remote(wave), Pending("gen", worker, wave))

    def _train_item(self, sid: int) -> TrainItem:
        s = self.samples.pop(sid)
        r, t = s.result, s.teacher
        assert r is not None and t is not None
        return TrainItem(r.prompt_ids, r.response_ids, r.behaviour_logprobs, r.token_versions, t)

    # ---------------------------------------------------------------- results
    def _on_gen(self, p: Pending, results: list[GenResult]) -> None:
        """Deliver a finished wave. The next wave starts only after every result has reached
        the controller, so it takes all the slots they free (as the simulator's wave does)."""
        q = self.queues[p.worker]
        q.in_wave, q.delivering = set(), True
        try:
            self._deliver(p, results)
        finally:
            q.delivering = False
        self._start_wave(p.worker)

    def _deliver(self, p: Pending, results: list[GenResult]) -> None:
        now = self._now()
        for r in results:
            sd = self.samples.get(r.sample_id)
            if sd is None:
                continue
            started, ended = self._rel(r.started_at), self._rel(r.finished_at)
            if r.status == "aborted":
                self.samples.pop(r.sample_id, None)
                self._send(M.GenerationAborted(now, r.sample_id, p.worker, started, len(r.response_ids),
                                               r.abort_reason or "evict", ended_at=ended))
                continue
            sd.result = r
            ids = r.response_ids
            text = self.codec.decode(ids[: ids.index(self.codec.eos_id)] if self.codec.eos_id in ids else ids)
            self.recorder.annotate(r.sample_id, correct=self.task.is_correct(self.task.problem(r.prompt_id), text),
                                   finish_reason=r.finish_reason)
            self._send(M.GenerationFinished(now, r.sample_id, p.worker, started, r.spans(), len(r.prompt_ids),
                                            ended_at=ended))

    def _on_score(self, p: Pending, value: tuple[list[TeacherPayload], float, float]) -> None:
        payloads, started, _ = value
        for pl in payloads:
            if pl.sample_id in self.samples:
                self.samples[pl.sample_id].teacher = pl
            self.recorder.annotate(pl.sample_id, teacher_cache_bytes=pl.nbytes)
        self._send(M.ScoringFinished(self._now(), p.context.batch_id, p.worker, self._rel(started)))

    def _on_train(self, p: Pending, value: tuple[dict[str, float], list[Any], float, float]) -> None:
        metrics, holder, started, _ = value
        step = p.context.step
        self.weights[step + 1] = holder
        for v in [v for v in self.weights if v < step]:  # nobody can ask for these any more
            del self.weights[v]
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}")
        self._send(M.TrainStepFinished(self._now(), step, self._rel(started), metrics))

    def _on_sync(self, p: Pending, value: tuple[float, float]) -> None:
        started, _ = value
        self._send(M.WeightSyncFinished(self._now(), p.worker, p.context.version, self._rel(started)))

    def _evaluate(self) -> Any:
        return self.learner.evaluate.remote(self.cfg.task.model_dump(), self.cfg.run.seed, str(self.models.student))

    def _finish(self) -> None:
        """After the controller stopped: save (and evaluate) the final student."""
        import ray

        self.pending.clear()
        ckpt = self.run_dir / "checkpoints" / "final"
        ray.get(self.learner.save.remote(str(ckpt), str(self.models.student)))
        if self.evaluates:
            end = ray.get(self._evaluate())
            path = self.run_dir / "summary.json"
            summary = json.loads(path.read_text())
            summary.update(accuracy=end["accuracy"], accuracy_start=self.eval_start.get("accuracy"),
                           eval_start=self.eval_start, eval_end=end)
            path.write_text(json.dumps(summary, indent=2))
        for handle in [*self.rollout.values(), *self.teachers.values(), self.learner]:
            ray.kill(handle)


def train(cfg: OPDConfig, run_dir: str | Path, *, progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Run the real trainer on ``cfg`` into ``run_dir``; return the run summary (with held-out
    accuracy of the student before and after, on the built-in task, unless ``evaluate=False``)."""
    return RayDriver(cfg, run_dir, progress=progress, evaluate=evaluate).run()

