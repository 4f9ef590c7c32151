"""Ray actors wrapping the torch backend: rollout workers, teacher workers, the learner.

Each actor pins itself to the devices its layout gives it (CPU cores through
``os.sched_setaffinity`` on ``cluster.device_type: cpu``; ``cuda:<i>`` otherwise) and
reports wall-clock ``time.time()`` stamps; the driver turns them into run-relative times.

The rollout actor is threaded (``max_concurrency``): ``generate`` runs a batched decode loop
while ``load_weights`` and ``abort`` arrive on other threads. They hand their request to the
decode loop through ``_hook``, which the engine calls between decode steps, so a weight
update lands exactly on a step boundary, as the pause modes require.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from asyncopd.backends.base import GenRequest, GenResult, TeacherPayload, TrainItem, WeightUpdate


def place(device_type: str, devices: list[int]) -> str:
    """Pin this process to its devices; return the torch device string."""
    import torch

    if device_type == "cpu":
        if hasattr(os, "sched_setaffinity"):
            available = os.sched_getaffinity(0)
            cores = {d for d in devices if d in available} or available
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(max(1, len(devices)))
        return "cpu"
    return f"cuda:{devices[0]}"


class RolloutWorker:
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], eos_id: int,
                 pad_id: int, max_new_tokens: int, temperature: float, top_p: float, seed: int, dtype: str) -> None:
        from asyncopd.backends.torch_backend import TorchRolloutEngine
        from asyncopd.models import load_causal_lm

        self.name = name
        device = place(device_type, devices)
        model = load_causal_lm(model_path, dtype=dtype, device=device)
        self.engine = TorchRolloutEngine(model, eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens,
                                         temperature=temperature, top_p=top_p, seed=seed, device=device)
        self._lock = threading.Condition()
        self._generating = False
        self._pending: WeightUpdate | None = None
        self._evict: set[int] = set()

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        with self._lock:
            self._generating = True
        try:
            return self.engine.generate(requests, step_hook=self._hook)
        finally:
            with self._lock:
                self._generating = False
                self._evict.clear()
                if self._pending is not None:  # arrived after the last decode step
                    self.engine.set_weights(self._pending)
                    self._pending = None
                self._lock.notify_all()

    def _hook(self) -> tuple[WeightUpdate | None, set[int]]:
        with self._lock:
            update, self._pending = self._pending, None
            evict, self._evict = self._evict, set()
            if update is not None:
                self._lock.notify_all()
            return update, evict

    def load_weights(self, holder: list[Any], version: int, pause_mode: str) -> tuple[float, float]:
        """Fetch ``version`` from the object store and apply it at the next step boundary."""
        import ray

        started = time.time()
        state = ray.get(holder[0])
        update = WeightUpdate(version, state, pause_mode)  # type: ignore[arg-type]
        with self._lock:
            if not self._generating:
                self.engine.set_weights(update)
            else:
                self._pending = update
                self._lock.wait_for(lambda: self._pending is not update)
        return started, time.time()

    def abort(self, sample_ids: list[int]) -> None:
        with self._lock:
            self._evict.update(sample_ids)


class TeacherWorker:
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], top_k: int,
                 pad_id: int, dtype: str) -> None:
        from asyncopd.backends.torch_backend import TorchTeacherScorer
        from asyncopd.models import load_causal_lm

        self.name = name
        device = place(device_type, devices)
        model = load_causal_lm(model_path, dtype=dtype, device=device)
        self.scorer = TorchTeacherScorer(model, top_k=top_k, pad_id=pad_id, device=device)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def score(self, items: list[tuple[int, list[int], list[int]]]) -> tuple[list[TeacherPayload], float, float]:
        started = time.time()
        payloads = self.scorer.score(items)
        return payloads, started, time.time()


class LearnerWorker:
    def __init__(self, model_path: str, *, device_type: str, devices: list[int], lr: float, weight_decay: float,
                 grad_clip: float, micro_batch_size: int, warmup_steps: int, dtype: str) -> None:
        from asyncopd.backends.torch_backend import TorchLearner
        from asyncopd.models import load_causal_lm

        self.model_path = model_path
        device = place(device_type, devices)
        self.model = load_causal_lm(model_path, dtype=dtype, device=device)
        self.learner = TorchLearner(self.model, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                                    micro_batch_size=micro_batch_size, warmup_steps=warmup_steps, device=device)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def train(self, step: int, batch: list[TrainItem]) -> tuple[dict[str, float], list[Any], float, float]:
        """One update; publish the new weights to the object store (wrapped in a list so the
        caller receives the reference, not the tensors)."""
        import ray

        started = time.time()
        if self.learner.version != step:
            raise RuntimeError(f"learner is at version {self.learner.version} but was asked for step {step}")
        metrics = self.learner.train_step(batch).as_dict()
        ref = ray.put(self.learner.weights_for_sync())
        return metrics, [ref], started, time.time()

    def evaluate(self, task_cfg: dict[str, Any], seed: int, codec_dir: str) -> dict[str, float]:
        """Greedy held-out accuracy of the current student on the built-in task (eval split)."""
        from dataclasses import asdict

        from asyncopd.models import evaluate, load_codec
        from asyncopd.task import BuiltinTask, TaskConfig

        task = BuiltinTask(TaskConfig.model_validate(task_cfg), seed=seed)
        return asdict(evaluate(self.model, load_codec(codec_dir), task))

    def save(self, path: str, codec_dir: str) -> str:
        """Save the student as a Hugging Face checkpoint directory, with the codec/tokenizer files."""
        import shutil
        from pathlib import Path

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        for f in Path(codec_dir).iterdir():
            weights_or_config = f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "generation_config.json")
            if f.is_file() and not weights_or_config and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
        return str(out)
