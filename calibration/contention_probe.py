"""Contention measured directly: each role's real work alone and together on one device.

``asyncopd calibrate --contention`` runs, on one core of this machine, one process per worker of
every role (two per role), each building the engine its Ray actor builds (``profilers/bench.py``)
and pinned as the actor pins itself (``runtime.actors.place``). A *unit* is one call of the
role's real work on the config's mean lengths:

- rollout: ``generate`` of ``rollout.max_num_seqs`` prompts, ``r_mean`` new tokens each (no EOS);
- teacher: ``score`` of ``min(teacher.max_batch_samples, learner.batch_size)`` rollouts;
- learner: one ``train_step`` on ``learner.batch_size`` scored rollouts.

Every *combination* (each role alone; each pair, including two workers of one role; the triple)
runs for ``window_s`` seconds (at least ``2 * members`` units of its slowest member alone), with
every member looping over its units from one start time.
Units that start and end inside the window ran with the whole combination busy; their mean wall
time over the same role's mean alone, measured in the same round, is the slowdown

    s(r | C) = mean wall(unit of r, C busy) / mean wall(unit of r, alone)       (>= 1 ideally)

Rounds repeat the combinations (alone first in each round), so host drift between rounds
cancels; the table shows each slowdown's range over the rounds beside its mean (two rollout
workers on one core read 1.94x-2.30x in six 3 s windows within minutes on the 2-core host, and
probes hours apart read phi(rollout|rollout) 0.94 to 1.81: give that pair more rounds). From the pairs,

    phi(r | o) = s(r | {r, o}) - 1                                (directed: what o costs r)
    phi(r, o)  = 2 / (1 / s(r | {r,o}) + 1 / s(o | {r,o})) - 1    (symmetric, as the simulator
                                                                  uses it: keeps the pair's
                                                                  combined progress rate)

and the triple tests the additive rule ``s(r | {r,a,b}) = 1 + phi(r|a) + phi(r|b)``
(``asyncopd/config/colocation.py``). Each unit's thread CPU time (``time.thread_time``; one torch
thread per core) beside its wall time separates time slicing (CPU share = cpu / wall < 1) from
interference (cpu inflation = cpu together / cpu alone > 1: caches, memory bandwidth, switching).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from typing import Any, Optional, Sequence

from tqdm.auto import tqdm

from asyncopd.config.colocation import ROLES, pair_key

WORKERS_PER_ROLE = 2
START_LEAD_S = 0.3  # the start time is sent this far ahead, so every member begins together


def combos() -> list[tuple[str, ...]]:
    """Worker names of every combination: each role alone, each pair (two workers of one role
    included) and the triple, in that order."""
    name = {r: [f"{r}{i}" for i in range(WORKERS_PER_ROLE)] for r in ROLES}
    out: list[tuple[str, ...]] = [(name[r][0],) for r in ROLES]
    for a, b in combinations_with_replacement(ROLES, 2):
        out.append((name[a][0], name[b][1 if a == b else 0]))
    out.append(tuple(name[r][0] for r in ROLES))
    return out


def _role(worker: str) -> str:
    return worker.rstrip("0123456789")


# --------------------------------------------------------------------------- the worker process
def _unit_of(cfg: Any, models: Any, role: str, core: int, seed: int):
    """Build ``role``'s engine pinned to ``core`` and return a zero-argument unit of its work."""
    from calibration.profilers.bench import Bench, task_lengths  # (lazy: torch, in the child only)

    layout = {r: {"workers": 1, "devices": [core]} for r in ROLES}
    cfg = cfg.model_copy(update={"layout": cfg.layout.model_validate(layout)})
    bench = Bench(cfg, models, seed=seed)
    L = task_lengths(cfg)
    p, r = L["p_mean"], L["r_mean"]
    if role == "rollout":
        from asyncopd.backends.base import GenRequest  # (lazy: the child only)

        n = cfg.rollout.max_num_seqs
        reqs = [GenRequest(i, i, ids) for i, ids in enumerate(bench.prompts(n, p))]
        engine = bench.rollout
        engine.max_new_tokens = r
        return lambda: engine.generate(reqs)
    if role == "teacher":
        reqs = bench.score_requests(bench.generated(p, r, min(cfg.teacher.max_batch_samples, cfg.learner.batch_size)))
        scorer = bench.teacher
        bench.place("teacher")
        return lambda: scorer.score(reqs)
    items = bench.train_items(p, r, cfg.learner.batch_size)
    learner = bench.learner(cfg.learner.micro_batch_size)
    bench.place("learner")
    return lambda: learner.train_step(items)


def _serve(conn: Any, cfg: Any, models: Any, role: str, core: int, seed: int) -> None:
    """Child process: build, warm up, then run units in the windows the parent sends."""
    try:
        unit = _unit_of(cfg, models, role, core, seed)
        for _ in range(2):
            unit()
        conn.send(("ready", os.getpid()))
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        start_at, end_at = msg
        time.sleep(max(0.0, start_at - time.time()))
        units = []
        while time.time() < end_at:
            t0, c0 = time.time(), time.thread_time()
            unit()
            units.append((t0, time.time(), time.thread_time() - c0))
        conn.send(units)


# --------------------------------------------------------------------------- the parent
def _recv(conn: Any, worker: str) -> Any:
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"contention probe {worker} exited before reporting (out of memory, or killed?)") from None


@dataclass
class Measured:
    """Per combination (tuple of worker names) and member: mean wall and CPU seconds of its
    units inside the window, per round."""

    wall: dict[tuple[str, ...], dict[str, list[float]]] = field(default_factory=dict)
    cpu: dict[tuple[str, ...], dict[str, list[float]]] = field(default_factory=dict)

    def add(self, combo: tuple[str, ...], worker: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(combo, {}).setdefault(worker, []).append(wall)
        self.cpu.setdefault(combo, {}).setdefault(worker, []).append(cpu)


@dataclass
class ContentionResult:
    core: int
    window_s: float
    rounds: int
    alone_s: dict[str, float]  # role -> mean unit wall time alone
    slowdown: dict[str, dict[str, float]]  # combination label -> member label -> s(r | C)
    cpu_share: dict[str, dict[str, float]]  # ... -> cpu / wall
    cpu_inflation: dict[str, dict[str, float]]  # ... -> cpu together / cpu alone
    directed: dict[str, float]  # "r|o" -> phi(r | o)
    pairs: dict[str, float]  # pair key -> symmetric phi
    triple: dict[str, tuple[float, float]]  # role -> (measured s, additive prediction)
    slowdown_range: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # min, max over rounds
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"core": self.core, "window_s": self.window_s, "rounds": self.rounds, "alone_s": self.alone_s,
                "slowdown": self.slowdown, "cpu_share": self.cpu_share, "cpu_inflation": self.cpu_inflation,
                "directed": self.directed, "pairs": self.pairs,
                "triple": {r: {"measured": m, "additive": a} for r, (m, a) in self.triple.items()},
                "slowdown_range": {c: {k: list(v) for k, v in ms.items()} for c, ms in self.slowdown_range.items()},
                "elapsed_s": self.elapsed_s}


def label(combo: Sequence[str]) -> str:
    return "+".join(_role(w) for w in combo)


def summarise(m: Measured, core: int, window_s: float, rounds: int) -> ContentionResult:
    """Slowdowns, directed and symmetric ``phi`` and the triple's additive check (module
    docstring) from the per-round means; each combination's round is divided by the same
    round's alone time, then rounds are averaged."""
    alone_combo = {_role(c[0]): c for c in m.wall if len(c) == 1}

    def per_round(table: dict, combo: tuple[str, ...], worker: str) -> list[float]:
        base = table[alone_combo[_role(worker)]][f"{_role(worker)}0"]
        return [v / b for v, b in zip(table[combo][worker], base)]

    def ratio(table: dict, combo: tuple[str, ...], worker: str) -> float:
        vals = per_round(table, combo, worker)
        return sum(vals) / len(vals)

    slow, spread, share, infl = {}, {}, {}, {}
    for combo in m.wall:
        lab = label(combo)
        same = len({_role(w) for w in combo}) < len(combo)
        key = (lambda w: f"{_role(w)}#{w[-1]}") if same else _role
        slow[lab] = {key(w): ratio(m.wall, combo, w) for w in combo}
        spread[lab] = {key(w): (min(v), max(v)) for w in combo for v in [per_round(m.wall, combo, w)]}
        infl[lab] = {key(w): ratio(m.cpu, combo, w) for w in combo}
        share[lab] = {key(w): sum(c / x for c, x in zip(m.cpu[combo][w], m.wall[combo][w])) / len(m.wall[combo][w])
                      for w in combo}
    directed, pairs = {}, {}
    for a, b in combinations_with_replacement(ROLES, 2):
        s = slow[f"{a}+{b}"]
        sa, sb = (s[f"{a}#0"], s[f"{a}#1"]) if a == b else (s[a], s[b])
        directed[f"{a}|{b}"] = sa - 1 if a != b else (sa + sb) / 2 - 1
        directed[f"{b}|{a}"] = sb - 1 if a != b else directed[f"{a}|{b}"]
        pairs[pair_key(a, b)] = 2.0 / (1.0 / sa + 1.0 / sb) - 1.0
    triple_s = slow["+".join(ROLES)]
    triple = {r: (triple_s[r], 1.0 + sum(directed[f"{r}|{o}"] for o in ROLES if o != r)) for r in ROLES}
    alone = {r: sum(m.wall[c][f"{r}0"]) / rounds for r, c in alone_combo.items()}
    return ContentionResult(core, window_s, rounds, alone, slow, share, infl, directed, pairs, triple, spread)


def check_probe_config(cfg: Any) -> None:
    """What the probe cannot measure, refused before any model is built."""
    if cfg.cluster.device_type != "cpu":
        raise ValueError("calibrate --contention measures CPU cores; on GPUs fit device sharing with "
                         "calibrate --from-run on runs of the layouts (cluster.device_type is "
                         f"{cfg.cluster.device_type!r})")
    if cfg.rollout.backend != "torch" or cfg.teacher.backend != "torch":
        raise ValueError("calibrate --contention runs the torch engines; set rollout.backend=torch and "
                         "teacher.backend=torch")


class ContentionProbe:
    """The probe's six worker processes, built once, measuring one round of every combination
    per ``round()``; ``result()`` summarises the rounds so far. Rounds may be spread out in
    time (``bench/fidelity.py`` runs one before each calibration run), so the factors average
    over more of the host's moments than back-to-back rounds do. A context manager: the
    workers end with it. Children are spawned, so nothing of this process's torch state leaks
    into them."""

    def __init__(self, cfg: Any, models: Any, *, core: Optional[int] = None, window_s: float = 4.0,
                 progress: bool = True) -> None:
        check_probe_config(cfg)
        if window_s <= 0:
            raise ValueError(f"window must be > 0 s, got {window_s:g} s")
        usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self.core = usable[-1] if core is None else core
        if self.core not in usable:
            raise ValueError(f"core {self.core} is not one this process may use ({usable})")
        self.cfg, self.models, self.window_s, self.progress = cfg, models, window_s, progress
        self.measured = Measured()
        self.rounds = 0
        self._alone: dict[str, float] = {}
        self._procs: dict[str, Any] = {}
        self._conns: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def __enter__(self) -> "ContentionProbe":
        ctx = mp.get_context("spawn")
        names = [f"{r}{i}" for r in ROLES for i in range(WORKERS_PER_ROLE)]
        bar = tqdm(total=len(names), desc="contention: build", unit="worker", disable=not self.progress)
        try:
            for i, w in enumerate(names):
                parent, child = ctx.Pipe()
                self._procs[w] = ctx.Process(target=_serve, args=(child, self.cfg, self.models, _role(w), self.core,
                                                                  self.cfg.run.seed + i), daemon=True)
                self._procs[w].start()
                child.close()  # else a child that dies leaves its end open here and recv never sees EOF
                self._conns[w] = parent
            for w in names:  # they build concurrently and report here
                status, info = _recv(self._conns[w], w)
                if status != "ready":
                    raise RuntimeError(f"contention probe {w}: {info}")
                bar.update()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        finally:
            bar.close()
        return self

    def round(self) -> None:
        """Every combination once, alone first (module docstring)."""
        plan = combos()
        bar = tqdm(total=len(plan), desc=f"contention: round {self.rounds + 1}", unit="step",
                   disable=not self.progress)
        m, alone = self.measured, self._alone
        for combo in plan:
            bar.set_postfix_str(label(combo))
            # long enough for a few units of the slowest member even when it runs len(combo)x slower
            span = max(self.window_s, 2.0 * len(combo) * max(alone.get(_role(w), 0.0) for w in combo))
            start = time.time() + START_LEAD_S
            for w in combo:
                self._conns[w].send((start, start + span))
            for w in combo:
                inside = [(t1 - t0, c) for t0, t1, c in _recv(self._conns[w], w) if t1 <= start + span]
                if not inside:
                    raise RuntimeError(f"contention probe: no {_role(w)} unit finished inside a {self.window_s:g} s "
                                       f"window of {label(combo)}; give a longer window")
                m.add(combo, w, sum(x for x, _ in inside) / len(inside), sum(c for _, c in inside) / len(inside))
                if len(combo) == 1:
                    alone[_role(w)] = max(alone.get(_role(w), 0.0), m.wall[combo][w][-1])
            bar.update()
        bar.close()
        self.rounds += 1

    def result(self) -> ContentionResult:
        if not self.rounds:
            raise RuntimeError("contention probe: no round measured yet")
        res = summarise(self.measured, self.core, self.window_s, self.rounds)
        res.elapsed_s = round(time.perf_counter() - self._t0, 1)
        return res

    def __exit__(self, *exc: Any) -> None:
        for c in self._conns.values():
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs.values():
            if p.pid is None:
                continue
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        self._conns.clear()
        self._procs.clear()


def measure_contention(cfg: Any, models: Any, *, core: Optional[int] = None, window_s: float = 4.0,
                       rounds: int = 2, progress: bool = True) -> ContentionResult:
    """Run every combination ``rounds`` times back to back on ``core`` (default: the last core
    this process may use) and summarise (module docstring)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with ContentionProbe(cfg, models, core=core, window_s=window_s, progress=progress) as probe:
        for _ in range(rounds):
            probe.round()
        return probe.result()


__all__ = ["ContentionProbe", "ContentionResult", "Measured", "combos", "measure_contention", "summarise"]
