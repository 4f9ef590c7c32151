"""Driver 1: the SimPy discrete-event simulator.

It runs the shared ``Controller`` against simulated workers whose durations come from
``sim.costs.CostModel`` and whose response lengths come from ``sim.lengths.LengthModel``,
and records the run with the same ``RunRecorder`` the Ray trainer uses.
"""

from __future__ import annotations

import gc
import json
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import simpy
from tqdm.auto import tqdm

from asyncopd.config.colocation import Sharing
from asyncopd.config.schema import OPDConfig
from asyncopd.config.unplaced import background_load
from asyncopd.control.messages import (
    AbortGeneration, Action, Event, Generate, GenerationAborted, GenerationFinished, PromptsAvailable, RunStarted,
    Score, ScoringFinished, Stop, StopRequested, SyncWeights, Train, TrainStepFinished, WeightSyncFinished,
)
from asyncopd.trace.setup import start_run
from sim.callbacks import Later
from sim.costs import make_cost_model
from sim.devices import SharedDevices, placement
from sim.lengths import LengthModel
from sim.rollout import SimRolloutWorker, SimSeq


class SimDriver:
    def __init__(self, cfg: OPDConfig, run_dir: str | Path | None, *, seed: int | None = None,
                 progress: bool = True) -> None:
        """``run_dir=None``: keep only the summary in memory (no files; fastest)."""
        self.cfg = cfg
        self.seed = cfg.run.seed if seed is None else seed
        self.env = simpy.Environment()
        self.costs = make_cost_model(cfg, self.seed)
        self.lengths = LengthModel(cfg, self.seed)
        self.pause_mode = cfg.pipeline.pause_mode
        self.recorder, self.ctrl = start_run(cfg, run_dir, driver="sim", clock="simulated",
                                             slots_per_worker=self._slots_per_worker(), seed=self.seed)
        lanes = self.recorder.workers
        self.placement = placement(cfg.layout)
        use = Counter(d for devs in self.placement.values() for d in devs)
        background = background_load(cfg.sim.costs, cfg.cluster, self.placement)  # (the driver's own core)
        self.shared = {w for w, devs in self.placement.items() if any(use[d] > 1 or d in background for d in devs)}
        self.devices = SharedDevices(self.env, Sharing.of(cfg.sim.costs), background)
        mode, min_join = cfg.simulated_batching()
        self.rollout = {n: SimRolloutWorker(self, n, s, mode, min_join) for n, s in lanes.items()
                        if n.startswith("rollout")}
        self.tokens: dict[int, int] = {}  # sample_id -> prompt + response tokens
        self.finished = self.env.event()
        self._event_s = dict(cfg.sim.costs.driver_event_s) if cfg.sim.cost_model == "parametric" else {}
        self._inbox: deque[tuple[Event, ...]] = deque()  # answers waiting for the driver
        self._bar = tqdm(total=cfg.run.total_steps, desc="simulate", unit="step", disable=not progress, leave=False)

    def _slots_per_worker(self) -> int:
        """``rollout.max_num_seqs``, capped by the KV cache when the cost model knows memory."""
        want = self.cfg.rollout.max_num_seqs
        per_seq = self.lengths.mean_prompt_tokens() + self.cfg.rollout.max_new_tokens
        cap = self.costs.kv_capacity_seqs(per_seq, self.cfg.rollout.gpu_memory_utilization)
        if cap is None:
            return want
        if cap < 1:
            raise ValueError(f"layout.rollout: one worker (tp={self.cfg.layout.rollout.tp}) cannot hold the student "
                             f"plus one {per_seq:.0f}-token sequence in memory ({self.cfg.cluster.hardware})")
        return min(want, cap)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        wall0 = time.perf_counter()
        with _no_cyclic_gc():
            self.send(RunStarted(0.0))
            self.send(PromptsAvailable(0.0, None))
            budget = self.cfg.run.time_budget_s
            if budget is not None:
                self.env.timeout(budget).callbacks.append(
                    lambda _: self.send(StopRequested(self.env.now, f"run.time_budget_s={budget:g} reached")))
            self.env.run(until=self.finished)
            self._bar.close()
            summary = dict(self.recorder.summary)
            summary["sim_wall_s"] = time.perf_counter() - wall0
            if self.recorder.dir is not None:
                (self.recorder.dir / "summary.json").write_text(json.dumps(summary, indent=2))
            self._let_go()
        return summary

    def _let_go(self) -> None:
        """The run is over: drop its state while the cyclic collector is still off, so that
        reference counting frees it now. (The workers and the driver refer to each other, and
        pending events to the workers: left to the collector, its first pass after the run
        would scan every record the run kept, ~0.13 s on the 64-GPU bench.) A driver runs once."""
        self.rollout.clear()
        self.tokens.clear()
        del self.ctrl, self.recorder

    def send(self, *events: Event) -> None:
        """Hand one worker answer (``events``: a wave's results come as one) to the controller:
        at once, or, when ``sim.costs.driver_event_s`` names any kind, through the driver's
        queue (``_serve``)."""
        if self._event_s:
            self._inbox.append(events)
            if len(self._inbox) == 1:
                self.env.process(self._serve())
            return
        for event in events:
            self._handle(event)

    def _handle(self, event: Event, held: list[Action] | None = None) -> None:
        """Give ``event`` to the controller and dispatch its actions (or hold them in ``held``)."""
        if isinstance(event, TrainStepFinished):
            self._bar.update(1)
        actions = self.ctrl.handle(event)
        if held is not None:
            held.extend(actions)
            return
        for action in actions:
            self._dispatch(action)

    def _serve(self):
        """The driver as one server, as the real one: it takes the next answer when free,
        stamps its events with that moment (its receipt), hands them to the controller, is busy
        for ``driver_event_s[kind]`` per event (measured per kind by a run's ``unplaced_cpu``: a
        finished sample, a scored batch, an update, a sync), and submits the answer's actions
        as it finishes, before it takes the next answer. The dispatch latencies (``dispatch_s``,
        ``rollout_dispatch_s``) then run from the submission, as a run's ``call_latency``
        measures them."""
        while self._inbox:
            events = self._inbox[0]
            now = self.env.now
            cost = sum(self._event_s.get(_KIND.get(type(e), ""), 0.0) for e in events)
            held: list[Action] | None = [] if cost > 0 else None
            for event in events:
                self._handle(replace(event, t=now), held)
            if held is not None:
                yield self.env.timeout(cost)
                for action in held:
                    self._dispatch(action)
            self._inbox.popleft()

    # ------------------------------------------------------------- actions
    def _dispatch(self, a: Action) -> None:
        if isinstance(a, Generate):
            prompt = self.lengths.prompt_tokens(a.prompt_id)
            response = self.lengths.response_tokens(a.prompt_id, self.ctrl.version)
            self.tokens[a.sample_id] = prompt + response
            self.rollout[a.worker].submit(SimSeq(a.sample_id, prompt, response))
        elif isinstance(a, AbortGeneration):
            self.rollout[a.worker].request_abort(a.sample_ids)
        elif isinstance(a, SyncWeights):
            self.rollout[a.worker].request_sync(a)
        elif isinstance(a, Score):
            d = self.costs.teacher(self._batch_tokens(a.sample_ids), len(a.sample_ids))
            self._after(a.worker, d, lambda start: ScoringFinished(self.env.now, a.batch_id, a.worker, start))
        elif isinstance(a, Train):
            d = self.costs.learner(self._batch_tokens(a.sample_ids), len(a.sample_ids))
            self._after("learner-0", d, lambda start: TrainStepFinished(self.env.now, a.step, start, {}))
        elif isinstance(a, Stop):
            if not self.finished.triggered:
                self.finished.succeed(a)

    def _batch_tokens(self, ids: tuple[int, ...]) -> int:
        return sum(map(self.tokens.__getitem__, ids))

    def _after(self, worker: str, work: float, make_event) -> None:
        """After the dispatch latency, run ``work`` uncontended seconds on ``worker``'s devices,
        then send ``make_event(start)``. A worker with devices of its own needs no process."""
        delay = self.costs.dispatch()
        start = self.env.now + delay
        if worker not in self.shared:
            Later(self.env, delay + work, lambda _: self.send(make_event(start)))
            return

        def body():
            yield self.env.timeout(delay)
            yield from self.devices.run_work(worker, self.placement[worker], work)
            self.send(make_event(start))

        self.env.process(body())


_KIND = {GenerationFinished: "generate", GenerationAborted: "generate", ScoringFinished: "score",
         TrainStepFinished: "train", WeightSyncFinished: "sync"}


@contextmanager
def _no_cyclic_gc():
    """Switch the cyclic garbage collector off while simulating. A run allocates millions of
    short-lived objects and keeps its records (attempts, spans, queued events), but creates
    no reference cycles as it goes (a timeout or callback lets go of what it holds when it
    fires): on the 64-GPU bench the collector's passes during a run (two at a gen-0
    threshold of 200,000, ~50 ms each, after ~10 at the default one) freed nothing and cost
    5-6% of the run's CPU time; peak RSS is the same without them. What a run leaves behind
    is collected after it, as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def simulate(cfg: OPDConfig, run_dir: str | Path | None, *, seed: int | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Simulate ``cfg`` into ``run_dir`` (None: in memory only); return the run summary."""
    return SimDriver(cfg, run_dir, seed=seed, progress=progress).run()
