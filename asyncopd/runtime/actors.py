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
from dataclasses import dataclass
from typing import Any

from asyncopd.backends.base import GenRequest, GenResult, ScoreRequest, TeacherPayload, TrainItem, WeightUpdate
from asyncopd.backends.factory import build_rollout_engine, build_teacher_scorer
from asyncopd.config.algorithm import AlgorithmConfig
from asyncopd.models.builtin import _quiet_transformers
from asyncopd.models.loading import load_codec
from asyncopd.runtime.checkpoints import STATE_FILE, step_name, tmp_dir
from asyncopd.task import BuiltinTask, TaskConfig


def place(device_type: str, devices: list[int]) -> str:
    """Pin this process to its devices; return the torch device string."""
    import torch

    if device_type == "cpu":
        if hasattr(os, "sched_setaffinity"):
            available = os.sched_getaffinity(0)
            cores = {d for d in devices if d in available} or available
            os.sched_setaffinity(0, cores)
            _pin_other_threads(cores)
        torch.set_num_threads(max(1, len(devices)))
        return "cpu"
    return f"cuda:{devices[0]}"


def _pin_other_threads(cores: set[int]) -> None:
    """``sched_setaffinity(0)`` pins only the calling thread; the threads Ray started before
    (RPC, (de)serialisation) would keep running on every core. Pin them too, so a role uses
    exactly its cores, as the simulator assumes (threads started later inherit the mask)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread is pinned, which is the compute thread
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except OSError:  # the thread ended meanwhile
            pass


@dataclass
class _Receiver:
    """A rollout worker's end of its collective channel: the layout, the group, the buffers it receives into."""

    layout: Any  # weight_transport.BucketLayout
    channel: Any  # weight_transport.WeightChannel
    buckets: list[Any]
    verify: bool


class RolloutWorker:
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], dtype: str,
                 backend: str = "torch", **engine_options: Any) -> None:
        self.name = name
        self.device = place(device_type, devices)
        self.engine = build_rollout_engine(backend, model_path, device=self.device, dtype=dtype, **engine_options)
        self._receiver: _Receiver | None = None  # once a collective channel is joined
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

    def load_weights(self, holder: list[Any], version: int, pause_mode: str,
                     verify: bool = False) -> tuple[float, float, float | None, str | None]:
        """Fetch ``version`` from the object store and apply it at the next step boundary.
        Returns (started, ended, paused seconds, digest): generation keeps going while the
        weights are fetched and only stops to load them; paused is None when the backend does
        not time its loads; digest (with ``verify``) hashes the weights it then samples with."""
        import ray

        started = time.time()
        self._apply(WeightUpdate(version, ray.get(holder[0]), pause_mode))  # type: ignore[arg-type]
        return started, time.time(), self._pause_of(version), self._digest() if verify else None

    def join_weight_channel(self, address: str, backend: str, timeout_s: float, bucket_bytes: int,
                            fingerprint: str, verify: bool) -> None:
        """Be rank 1 of this worker's group with the learner (``runtime/weight_transport.py``)."""
        from asyncopd.runtime.weight_transport import BucketLayout, WeightChannel, connect_store  # (lazy: torch)

        layout = BucketLayout.of(self.engine.state_dict(), bucket_bytes)
        if layout.fingerprint() != fingerprint:
            raise RuntimeError(f"{self.name}: its model's weight layout differs from the learner's "
                               f"({layout.fingerprint()} vs {fingerprint}): not the same architecture")
        channel = WeightChannel(connect_store(address, timeout_s), 1, backend, timeout_s)
        self._receiver = _Receiver(layout, channel, layout.empty(self.device), verify)

    def receive_weights(self, version: int, pause_mode: str) -> tuple[float, float, float | None, str | None]:
        """Receive ``version`` from the learner's broadcast (generation goes on meanwhile), apply
        it at the next step boundary; returns what ``load_weights`` does."""
        r = self._receiver
        if r is None:
            raise RuntimeError(f"{self.name}: receive_weights before join_weight_channel")
        started = time.time()
        r.channel.broadcast(r.buckets)
        self._apply(WeightUpdate(version, r.layout.unpack(r.buckets), pause_mode))  # type: ignore[arg-type]
        return started, time.time(), self._pause_of(version), self._digest() if r.verify else None

    def _apply(self, update: WeightUpdate) -> None:
        """Load ``update`` now if idle, else hand it to the decode loop and wait until it is loaded."""
        with self._lock:
            if not self._generating:
                self.engine.set_weights(update)
            else:
                self._pending = update
                self._lock.wait_for(lambda: self._pending is not update)

    def _digest(self) -> str:
        from asyncopd.runtime.weight_transport import weights_digest  # (lazy: torch)

        return weights_digest(self.engine.state_dict())

    def _pause_of(self, version: int) -> float | None:
        loads = getattr(self.engine, "load_seconds", None)
        if loads is None:
            return None
        deadline = time.time() + 2.0  # handed to the decode thread, which may still be loading it
        while version not in loads and time.time() < deadline:
            time.sleep(2e-4)
        return loads.pop(version, None)

    def abort(self, sample_ids: list[int]) -> None:
        with self._lock:
            self._evict.update(sample_ids)


class TeacherWorker:
    def __init__(self, name: str, model_path: str, *, device_type: str, devices: list[int], dtype: str,
                 backend: str = "torch", **scorer_options: Any) -> None:
        self.name = name
        device = place(device_type, devices)
        self.scorer = build_teacher_scorer(backend, model_path, device=device, dtype=dtype, **scorer_options)

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def score(self, items: list[ScoreRequest]) -> tuple[list[TeacherPayload], float, float]:
        started = time.time()
        payloads = self.scorer.score(items)
        return payloads, started, time.time()


class LearnerWorker:
    """The learner, and the publisher of every version it makes: into the object store
    (``sync_method="object_store"``) or as a bucketed snapshot that ``serve_weights``
    broadcasts to one rollout worker at a time (``"collective"``; the actor is then threaded
    so that serving overlaps the next update). The two newest versions are kept (a worker is
    only ever synced to the newest version at the time of asking)."""

    def __init__(self, model_path: str, *, device_type: str, devices: list[int], lr: float, weight_decay: float,
                 grad_clip: float, micro_batch_size: int, warmup_steps: int, dtype: str,
                 decay_steps: int = 0, min_lr_ratio: float = 0.1,
                 algorithm: dict[str, Any] | None = None, sync_method: str = "object_store",
                 sync_bucket_bytes: int = 64 << 20, verify_sync: bool = False) -> None:
        # (lazy: torch loads in the actor's own process, never in the driver that imports this module)
        from asyncopd.backends.torch_backend import TorchLearner
        from asyncopd.models import load_causal_lm
        from asyncopd.runtime.weight_transport import BucketLayout

        self.model_path = model_path
        self.device = place(device_type, devices)
        self.model = load_causal_lm(model_path, dtype=dtype, device=self.device)
        self.learner = TorchLearner(self.model, lr=lr, weight_decay=weight_decay, grad_clip=grad_clip,
                                    micro_batch_size=micro_batch_size, warmup_steps=warmup_steps, device=self.device,
                                    decay_steps=decay_steps, min_lr_ratio=min_lr_ratio,
                                    algorithm=AlgorithmConfig.model_validate(algorithm or {}))
        if sync_method not in ("object_store", "collective"):
            raise ValueError(f"sync_method must be object_store or collective, got {sync_method!r}")
        self.sync_method, self.verify_sync = sync_method, verify_sync
        self.layout = BucketLayout.of(self.model.state_dict(), sync_bucket_bytes)
        self._snapshots: dict[int, tuple[list[Any], str | None]] = {}  # version -> (buckets, digest)
        self._snapshot_lock = threading.Lock()
        self._stores: dict[str, Any] = {}
        self._channels: dict[str, Any] = {}

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}

    def train(self, step: int, batch: list[TrainItem]) -> tuple[dict[str, float], dict[str, Any], float, float]:
        """One update, then publish the new version (``_publish``)."""
        started = time.time()
        if self.learner.version != step:
            raise RuntimeError(f"learner is at version {self.learner.version} but was asked for step {step}")
        metrics = self.learner.train_step(batch).as_dict()
        published = self._publish()
        self._maybe_checkpoint(metrics)
        return metrics, published, started, time.time()

    def publish(self) -> dict[str, Any]:
        """Publish the current version again, as after an update (``_publish``), adding
        ``seconds``: how long the learner spent on it (``bench/weight_sync.py``)."""
        started = time.time()
        return {**self._publish(), "seconds": time.time() - started}

    def _publish(self) -> dict[str, Any]:
        """Make the current version available to the rollout workers. Returns ``holder`` (the
        object-store reference wrapped in a list, so the caller receives the reference, not the
        tensors; empty for the collective method) and ``digest`` (with ``verify_sync``)."""
        import ray

        from asyncopd.runtime.weight_transport import weights_digest  # (lazy: torch)

        version = self.learner.version
        if self.sync_method == "object_store":
            state = self.learner.weights_for_sync()
            return {"holder": [ray.put(state)], "digest": weights_digest(state) if self.verify_sync else None}
        buckets = self.layout.pack(self.model.state_dict(), self.device)
        digest = weights_digest(self.layout.unpack(buckets)) if self.verify_sync else None
        with self._snapshot_lock:
            self._snapshots[version] = (buckets, digest)
            for old in [v for v in self._snapshots if v < version - 1]:
                del self._snapshots[old]
        return {"holder": [], "digest": digest}

    # ------------------------------------------------------------ collective weight sync (runtime/weight_transport.py)
    def weight_layout(self) -> str:
        return self.layout.fingerprint()

    def open_weight_channel(self, worker: str, timeout_s: float) -> str:
        """Host ``worker``'s rendezvous store on a free port of this node; returns its address."""
        import ray

        from asyncopd.runtime.weight_transport import open_store  # (lazy: torch)

        self._stores[worker], address = open_store(ray.util.get_node_ip_address(), timeout_s)
        return address

    def join_weight_channel(self, worker: str, backend: str, timeout_s: float) -> None:
        """Be rank 0 of ``worker``'s group (returns once the worker has joined too)."""
        from asyncopd.runtime.weight_transport import WeightChannel  # (lazy: torch)

        self._channels[worker] = WeightChannel(self._stores.pop(worker), 0, backend, timeout_s)

    def serve_weights(self, worker: str, version: int) -> tuple[float, float]:
        """Broadcast ``version`` to ``worker`` (which calls ``receive_weights`` at the same time)."""
        with self._snapshot_lock:
            if version not in self._snapshots:
                raise RuntimeError(f"version {version} is no longer held (held: {sorted(self._snapshots)})")
            buckets, _ = self._snapshots[version]
        started = time.time()
        self._channels[worker].broadcast(buckets)
        return started, time.time()

    def evaluate(self, task_cfg: dict[str, Any], seed: int, codec_dir: str) -> dict[str, float]:
        """Greedy held-out accuracy of the current student on the built-in task (eval split)."""
        from dataclasses import asdict

        from asyncopd.models import evaluate  # (lazy: torch, in the actor's process)

        task = BuiltinTask(TaskConfig.model_validate(task_cfg), seed=seed)
        return asdict(evaluate(self.model, load_codec(codec_dir), task))

    def save(self, path: str, codec_dir: str) -> str:
        """Save the student as a Hugging Face checkpoint directory, with the codec/tokenizer files."""
        import shutil
        from pathlib import Path

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():  # (no "Writing model shards" bar at every checkpoint)
            self.model.save_pretrained(out)
        for f in Path(codec_dir).iterdir():
            weights_or_config = f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "generation_config.json")
            if f.is_file() and not weights_or_config and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
        return str(out)

    # ------------------------------------------------------------ checkpoints (asyncopd.runtime.checkpoints)
    def configure_checkpoints(self, root: str, every: int, last_version: int, codec_dir: str) -> None:
        """After each update reaching a version ``v`` with ``v % every == 0`` and ``v < last_version``
        (the final one is saved at the end anyway), write a checkpoint into ``root/.tmp-step_v``
        before ``train`` returns; the driver then adds ``resume.json`` and renames it into place."""
        self._checkpointing = (root, every, last_version, codec_dir)

    def _maybe_checkpoint(self, metrics: dict[str, float]) -> None:
        root, every, last, codec_dir = getattr(self, "_checkpointing", None) or ("", 0, 0, "")
        v = self.learner.version
        if every > 0 and v % every == 0 and v < last:
            metrics["checkpoint_s"] = self.write_checkpoint(str(tmp_dir(root, step_name(v))), codec_dir)["seconds"]

    def write_checkpoint(self, path: str, codec_dir: str) -> dict[str, Any]:
        """The student as a Hugging Face directory (``save``) plus ``trainer_state.pt`` (weights,
        optimizer state, version) in ``path``, which is replaced if it exists."""
        import shutil
        from pathlib import Path

        import torch

        t0 = time.time()
        out = Path(path)
        if out.exists():
            shutil.rmtree(out)
        self.save(path, codec_dir)
        torch.save(self.learner.state_dict(), out / STATE_FILE)
        return {"version": self.learner.version, "path": path, "seconds": time.time() - t0}

    def load_checkpoint(self, path: str) -> tuple[int, dict[str, Any]]:
        """Continue from ``path/trainer_state.pt``: weights, optimizer state, version. The
        optimizer's hyper-parameters stay those of this run's config. Returns the version and
        its publication (as ``train`` does)."""
        from pathlib import Path

        import torch

        state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.learner.optimizer.param_groups]
        self.learner.load_state_dict(state)
        for g, h in zip(self.learner.optimizer.param_groups, hyper):  # (new group dicts after loading)
            g.update(h)
        return self.learner.version, self._publish()
