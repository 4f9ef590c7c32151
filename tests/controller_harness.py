"""A driver for the controller whose only clock is a random choice of what finishes next.

Used by the property tests: every outstanding action becomes a pending completion; the
test picks which one completes next (and sometimes kills a worker), so hypothesis explores
event orders the real drivers would only hit by luck.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import strategies as st

from asyncopd.control import messages as M
from asyncopd.control.controller import Controller
from asyncopd.control.policies import POLICIES, Policy


def registered_policies() -> st.SearchStrategy[Policy]:
    """Any registered policy with any parameters its declaration allows (integers from their
    minimum to 4 above it, ``None`` where optional, each choice): a policy added to the
    registry is covered by every property test that draws from this, with no new test code."""
    def params(cls: type[Policy]) -> st.SearchStrategy[Policy]:
        fields = {}
        for spec in cls.params():
            if spec.choices is not None:
                values = st.sampled_from(spec.choices)
            else:
                low = spec.minimum or 0
                values = st.integers(low, low + 4)
            fields[spec.name] = st.one_of(st.none(), values) if spec.optional else values
        return st.builds(cls, **fields)

    return st.one_of([params(cls) for cls in POLICIES.values()])


@dataclass
class InFlight:
    sample_id: int
    worker: str
    started_at: float
    versions: list[int]  # versions the worker held while this sample was generating
    abort_requested: bool = False


@dataclass
class FakeCluster:
    ctrl: Controller
    rng: random.Random
    fail_prob: float = 0.0
    restart_prob: float = 0.0  # of a failed worker: the driver restarts it (else it stays dead)
    restart_fail_prob: float = 0.0  # of a restart: it fails (a second, final WorkerFailed)
    t: float = 0.0
    worker_version: dict[str, int] = field(default_factory=dict)
    gens: dict[int, InFlight] = field(default_factory=dict)
    pending: list[tuple] = field(default_factory=list)  # (kind, payload, issued_at)
    dead: set[str] = field(default_factory=set)
    stops: list[M.Stop] = field(default_factory=list)
    events: int = 0
    unsynced: set[str] = field(default_factory=set)  # restarted behind the learner, not synced yet

    def start(self) -> None:
        for w in self.ctrl.workers:
            self.worker_version[w] = 0
        self.send(M.RunStarted(0.0))
        self.send(M.PromptsAvailable(0.0, None))

    def send(self, ev: M.Event) -> None:
        self.events += 1
        for a in self.ctrl.handle(ev):
            self.apply(a)
        self.ctrl.check_invariants()

    def apply(self, a: M.Action) -> None:
        if isinstance(a, M.Generate):
            assert a.worker not in self.unsynced, f"{a.worker} generates before its restart's sync"
            self.gens[a.sample_id] = InFlight(a.sample_id, a.worker, self.t, [self.worker_version[a.worker]])
            self.pending.append(("gen", a.sample_id, self.t))
        elif isinstance(a, M.AbortGeneration):
            for sid in a.sample_ids:
                if sid in self.gens:
                    self.gens[sid].abort_requested = True
        elif isinstance(a, M.Score):
            self.pending.append(("score", a, self.t))
        elif isinstance(a, M.Train):
            self.pending.append(("train", a, self.t))
        elif isinstance(a, M.SyncWeights):
            self.pending.append(("sync", a, self.t))
        elif isinstance(a, M.Stop):
            self.stops.append(a)

    def step(self) -> bool:
        """Complete one pending item (or fail a worker). False when nothing is pending."""
        if self.ctrl.done or not self.pending:
            return False
        self.t += self.rng.random()
        if self.fail_prob and self.rng.random() < self.fail_prob:
            alive = [w for w in list(self.ctrl.workers) + list(self.ctrl.teachers) if w not in self.dead]
            if alive:
                w = self.rng.choice(alive)
                self.dead.add(w)
                self.pending = [p for p in self.pending if self._owner(p) != w]
                for sid in [s for s, g in self.gens.items() if g.worker == w]:
                    del self.gens[sid]
                restarting = self.rng.random() < self.restart_prob
                if restarting:
                    self.pending.append(("restart", w, self.t))
                self.send(M.WorkerFailed(self.t, w, "injected", restarting=restarting))
                return True
        kind, payload, issued = self.pending.pop(self.rng.randrange(len(self.pending)))
        if kind == "gen":
            g = self.gens.pop(payload, None)
            if g is None:
                return True
            if g.abort_requested and self.rng.random() < 0.8:
                self.send(M.GenerationAborted(self.t, g.sample_id, g.worker, g.started_at, 0, "evict"))
            else:
                self.send(M.GenerationFinished(self.t, g.sample_id, g.worker, g.started_at, self._spans(g), 5))
        elif kind == "restart":
            if self.rng.random() < self.restart_fail_prob:
                self.send(M.WorkerFailed(self.t, payload, "restart failed"))
            else:
                self.dead.discard(payload)
                if payload in self.worker_version:
                    self.worker_version[payload] = 0
                    if self.ctrl.version > 0:
                        self.unsynced.add(payload)
                self.send(M.WorkerRestarted(self.t, payload, version=0))
        elif kind == "score":
            self.send(M.ScoringFinished(self.t, payload.batch_id, payload.worker, issued))
        elif kind == "train":
            self.send(M.TrainStepFinished(self.t, payload.step, issued, {"loss": 1.0}))
        elif kind == "sync":
            w, v = payload.worker, payload.version
            for sid in [s for s, g in self.gens.items() if g.worker == w]:
                if payload.pause_mode == "abort":
                    g = self.gens.pop(sid)
                    self.pending = [p for p in self.pending if not (p[0] == "gen" and p[1] == sid)]
                    self.send(M.GenerationAborted(self.t, sid, w, g.started_at, 1, "sync_abort"))
                else:
                    self.gens[sid].versions.append(v)
            self.worker_version[w] = v
            self.unsynced.discard(w)
            self.send(M.WeightSyncFinished(self.t, w, v, issued))
        return True

    def _spans(self, g: InFlight) -> M.Spans:
        spans, first = [], True
        for v in g.versions:
            n = self.rng.randint(1 if first else 0, 6)
            first = False
            spans.append((v, n))
        return tuple(spans)

    def _owner(self, p: tuple) -> str:
        kind, payload, _ = p
        if kind == "gen":
            g = self.gens.get(payload)
            return g.worker if g else ""
        if kind == "train":
            return "learner-0"
        if kind == "restart":
            return ""  # (the restart itself is never lost with the worker)
        return payload.worker
