"""What every micro-benchmark shares: the engines the trainer's actors build, pinned like them.

``Bench`` builds, on first use, the same objects the Ray actors hold (``asyncopd.runtime.actors``):
the rollout engine and teacher scorer through ``asyncopd.backends.factory`` with the options the
driver passes from the config, the ``TorchLearner`` as ``LearnerWorker`` builds it. Before a
stage is measured, ``place(role)`` calls the actors' own ``place`` with that role's devices from
``layout`` (CPU: ``sched_setaffinity`` to those cores and ``torch.set_num_threads(len(cores))``;
CUDA: ``cuda:<i>``), so a point costs what the actor pays minus the Ray call around it.

Inputs are synthetic: uniformly random token ids (the cost of a forward pass does not depend on
which ids), with the lengths the config's task produces. The rollout engine runs with no EOS id,
so every sequence generates exactly the tokens asked for.
"""

from __future__ import annotations

import os
import time
from statistics import median
from typing import Any, Callable, Sequence

import numpy as np

from asyncopd.backends.base import GenRequest, ScoreRequest, TrainItem
from asyncopd.backends.factory import build_rollout_engine, build_teacher_scorer
from asyncopd.config import OPDConfig
from asyncopd.runtime.actors import place
from asyncopd.task import BuiltinTask


class Bench:
    def __init__(self, cfg: OPDConfig, models: Any, *, seed: int = 0) -> None:
        if cfg.rollout.backend != "torch" or cfg.teacher.backend != "torch":
            raise ValueError("calibrate profiles the torch backend; set rollout.backend=torch and teacher.backend=torch "
                             "(vLLM engines: calibrate --from-run on a vLLM run)")
        self.cfg, self.models, self.codec = cfg, models, models.codec
        self.rng = np.random.default_rng(seed)
        self.threads: dict[str, int] = {}
        self.device = "cpu"
        self.role: str | None = None
        self._rollout: Any = None
        self._teacher: Any = None
        self._learner: Any = None
        self._pool: dict[tuple[int, int], list[Any]] = {}
        self._scored: dict[tuple[int, int], list[Any]] = {}
        self._saved = (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None, None)

    # ------------------------------------------------------------------ placement
    def place(self, role: str) -> str:
        """Pin this process as the ``role`` actor pins itself; returns the torch device."""
        import torch

        if self._saved[1] is None:
            self._saved = (self._saved[0], torch.get_num_threads())
        self.device = place(self.cfg.cluster.device_type, list(getattr(self.cfg.layout, role).devices))
        self.threads[role] = torch.get_num_threads()
        self.role = role
        return self.device

    def _build_as(self, role: str, build: Callable[[str], Any]) -> Any:
        """Build an engine pinned as ``role`` (as its actor is), then pin back to the current role."""
        prev = self.role
        obj = build(self.place(role))
        if prev is not None and prev != role:
            self.place(prev)
        return obj

    def restore(self) -> None:
        """Undo ``place``: the affinity and thread count this process had before."""
        import torch

        cores, threads = self._saved
        if cores is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        if threads is not None:
            torch.set_num_threads(threads)
        self.role = None

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ engines
    @property
    def rollout(self) -> Any:
        """``TorchRolloutEngine`` on the student, as ``RolloutWorker`` builds it (EOS off)."""
        if self._rollout is None:
            cfg, algo = self.cfg, self.cfg.algorithm
            self._rollout = self._build_as("rollout", lambda device: build_rollout_engine(
                "torch", str(self.models.student), device=device, dtype=cfg.models.dtype, eos_id=None,
                pad_id=self.codec.pad_id, max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=cfg.run.seed * 1000,
                capture_top_k=algo.rollout_top_k(), capture_mc=algo.rollout_mc_samples()))
        return self._rollout

    @property
    def teacher(self) -> Any:
        """``TorchTeacherScorer`` on the teacher with the config's top-k, as ``TeacherWorker`` builds it."""
        if self._teacher is None:
            cfg, algo = self.cfg, self.cfg.algorithm
            self._teacher = self._build_as("teacher", lambda device: build_teacher_scorer(
                "torch", str(self.models.teacher), device=device, dtype=cfg.models.dtype,
                top_k=cfg.teacher.top_k, pad_id=self.codec.pad_id, num_samples=algo.teacher_samples(),
                full_vocab=algo.spec.teacher_full, seed=cfg.run.seed * 1000 + 500))
        return self._teacher

    def scorer(self, top_k: int) -> Any:
        """A scorer with another ``top_k`` on the same teacher model (nothing reloaded)."""
        from asyncopd.backends.torch_backend import TorchTeacherScorer  # (lazy: torch)

        t, algo = self.teacher, self.cfg.algorithm
        if top_k == t.top_k:
            return t
        return TorchTeacherScorer(t.model, top_k=top_k, pad_id=self.codec.pad_id, num_samples=algo.teacher_samples(),
                                  full_vocab=algo.spec.teacher_full, device=t.device)

    def learner(self, micro_batch_size: int) -> Any:
        """``TorchLearner`` on the student, as ``LearnerWorker`` builds it; the micro-batch size is
        switched on the same object (it is read at every step)."""
        if self._learner is None:
            from asyncopd.backends.torch_backend import TorchLearner  # (lazy: torch)
            from asyncopd.models import load_causal_lm

            cfg, lc = self.cfg, self.cfg.learner

            def build(device: str) -> Any:
                model = load_causal_lm(str(self.models.student), dtype=cfg.models.dtype, device=device)
                return TorchLearner(model, lr=lc.lr, weight_decay=lc.weight_decay, grad_clip=lc.grad_clip,
                                    micro_batch_size=lc.micro_batch_size, warmup_steps=lc.warmup_steps,
                                    device=device, algorithm=cfg.algorithm)

            self._learner = self._build_as("learner", build)
        self._learner.micro_batch_size = int(micro_batch_size)
        return self._learner

    # ------------------------------------------------------------------ inputs
    @property
    def vocab(self) -> int:
        return int(self.codec.vocab_size)

    def prompts(self, n: int, length: int) -> list[list[int]]:
        return self.rng.integers(0, self.vocab, size=(n, length)).tolist()

    def generated(self, prompt_len: int, response_len: int, count: int) -> list[Any]:
        """``count`` rollouts (``GenResult``, with the config's capture) of these lengths, cached."""
        have = self._pool.setdefault((prompt_len, response_len), [])
        if len(have) < count:
            eng = self.rollout
            reqs = [GenRequest(len(have) + i, len(have) + i, p)
                    for i, p in enumerate(self.prompts(count - len(have), prompt_len))]
            with self.max_new_tokens(response_len):
                have.extend(eng.generate(reqs))
        return have[:count]

    def score_requests(self, results: Sequence[Any]) -> list[Any]:
        """``ScoreRequest``s for rollouts, with the query ids the estimator asks the teacher for
        (as the driver builds them)."""
        want = self.cfg.algorithm.spec.teacher_query
        out = []
        for r in results:
            q = None
            if want is not None and r.capture is not None:
                q = r.capture.topk_ids if want == "rollout_topk" else r.capture.mc_ids
            out.append(ScoreRequest(r.sample_id, r.prompt_ids, r.response_ids, q))
        return out

    def train_items(self, prompt_len: int, response_len: int, count: int) -> list[Any]:
        """``TrainItem``s: rollouts scored by the config's teacher (cached)."""
        key = (prompt_len, response_len)
        have = self._scored.setdefault(key, [])
        if len(have) < count:
            gens = self.generated(prompt_len, response_len, count)[len(have):]
            pays = self.teacher.score(self.score_requests(gens))
            have.extend(TrainItem(g.prompt_ids, g.response_ids, g.behaviour_logprobs, g.token_versions, p, g.capture)
                        for g, p in zip(gens, pays))
        return have[:count]

    def max_new_tokens(self, n: int) -> "_MaxNew":
        return _MaxNew(self.rollout, n)


class _MaxNew:
    """Temporarily set the rollout engine's ``max_new_tokens``."""

    def __init__(self, engine: Any, n: int) -> None:
        self.engine, self.tokens, self.old = engine, int(n), engine.max_new_tokens

    def __enter__(self) -> Any:
        self.engine.max_new_tokens = self.tokens
        return self.engine

    def __exit__(self, *exc: Any) -> None:
        self.engine.max_new_tokens = self.old


def median_seconds(fn: Callable[[], Any], bench: Bench, *, warmup: int = 1, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        bench.synchronize()
        t0 = time.perf_counter()
        fn()
        bench.synchronize()
        times.append(time.perf_counter() - t0)
    return float(median(times))


def spread(specs: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Order grid points so that any prefix covers the grid: farthest-point order in log space of
    ``keys``, starting from the smallest point. A budget that stops early keeps a spread subset."""
    if not specs:
        return []
    pts = np.log(np.array([[max(float(s[k]), 1e-9) for k in keys] for s in specs]))
    span = np.ptp(pts, axis=0)
    pts = pts / np.where(span > 0, span, 1.0)
    order = [int(np.argmin(pts.sum(axis=1)))]
    dist = np.linalg.norm(pts - pts[order[0]], axis=1)
    dist[order[0]] = -np.inf
    while len(order) < len(specs):
        nxt = int(np.argmax(dist))
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
        dist[order] = -np.inf
    return [specs[i] for i in order]


def task_lengths(cfg: OPDConfig) -> dict[str, int]:
    """Prompt and response token counts of the config's task: smallest, mean, largest
    (responses capped at ``rollout.max_new_tokens``; ``sim.prompt_tokens_mean`` wins when set)."""
    task = BuiltinTask(cfg.task, seed=cfg.run.seed)
    cap = cfg.rollout.max_new_tokens
    P, R = task.prompt_length_pmf(), task.response_length_pmf()
    p_mean = cfg.sim.prompt_tokens_mean or task.mean_prompt_tokens()
    return {"p_min": min(P), "p_mean": max(1, round(p_mean)), "p_max": max(P),
            "r_min": min(min(R), cap), "r_mean": max(1, min(round(task.mean_response_tokens()), cap)),
            "r_max": min(max(R), cap)}
