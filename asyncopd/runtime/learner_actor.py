"""The learner's Ray actor: one per rank of a data-parallel learner (one rank on one device).

Rank 0 is the learner the rest of the trainer talks to: it publishes every version it makes,
into the object store (``sync_method="object_store"``) or as a bucketed snapshot that
``serve_weights`` broadcasts to one rollout worker at a time (``"collective"``; the actor is
then threaded so that serving overlaps the next update; the two newest versions are kept, as a
worker is only ever synced to the newest version at the time of asking), evaluates, and writes
checkpoints. With ``world > 1`` every rank trains on its shard (``asyncopd/backends/
torch_backend/data_parallel.py``) and takes part in what needs the full state (FSDP gathers
it): the driver's ``LearnerGroup`` calls those methods on every rank, and ranks other than 0
answer empty. Before the first update the ranks form their group (``open_group`` on rank 0,
then ``join_group`` on all, at once; rendezvous through a store on a free port whose address
travels through Ray).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from asyncopd.backends.base import TrainItem
from asyncopd.config.algorithm import AlgorithmConfig
from asyncopd.models.builtin import _quiet_transformers
from asyncopd.models.loading import load_codec
from asyncopd.runtime.actors import cpu_seconds, freeze_heap, place, where_am_i
from asyncopd.runtime.checkpoints import STATE_FILE, step_name, tmp_dir
from asyncopd.task import BuiltinTask, TaskConfig

EMPTY_PUBLICATION: dict[str, Any] = {"holder": [], "digest": None}


class LearnerWorker:
    def __init__(self, model_path: str, *, device_type: str, devices: list[int], lr: float, weight_decay: float,
                 grad_clip: float, micro_batch_size: int, warmup_steps: int, dtype: str,
                 decay_steps: int = 0, min_lr_ratio: float = 0.1,
                 algorithm: dict[str, Any] | None = None, sync_method: str = "object_store",
                 sync_bucket_bytes: int = 64 << 20, verify_sync: bool = False,
                 rank: int = 0, world: int = 1, strategy: str = "ddp") -> None:
        # (lazy: torch loads in the actor's own process, never in the driver that imports this module)
        from asyncopd.models import load_causal_lm
        from asyncopd.runtime.weight_transport import BucketLayout

        if sync_method not in ("object_store", "collective"):
            raise ValueError(f"sync_method must be object_store or collective, got {sync_method!r}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a group of {world}")
        self.model_path, self.dtype = model_path, dtype
        self.rank, self.world, self.strategy = rank, world, strategy
        self.device = place(device_type, devices)
        self.model = load_causal_lm(model_path, dtype=dtype, device=self.device)
        self._options = dict(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, micro_batch_size=micro_batch_size,
                             warmup_steps=warmup_steps, decay_steps=decay_steps, min_lr_ratio=min_lr_ratio,
                             algorithm=AlgorithmConfig.model_validate(algorithm or {}))
        self.learner: Any = None  # TorchLearner, once built (after the group forms, with world > 1)
        if world == 1:
            self._build(None)
        self.sync_method, self.verify_sync = sync_method, verify_sync
        self.layout = BucketLayout.of(self.model.state_dict(), sync_bucket_bytes)  # (before FSDP shards it)
        self._snapshots: dict[int, tuple[list[Any], str | None]] = {}  # version -> (buckets, digest)
        self._snapshot_lock = threading.Lock()
        self._stores: dict[str, Any] = {}
        self._channels: dict[str, Any] = {}
        self._plain: Any = None  # FSDP rank 0: an unsharded copy to evaluate and save

    def _build(self, parallel: Any) -> None:
        from asyncopd.backends.torch_backend import TorchLearner  # (lazy: torch)

        self.learner = TorchLearner(self.model, device=self.device, parallel=parallel, **self._options)

    def ready(self) -> dict[str, Any]:
        freeze_heap()
        return {**where_am_i(), "device": self.device, "rank": self.rank}

    # ------------------------------------------------------------ the data-parallel group
    def open_group(self, timeout_s: float) -> str:
        """Rank 0: host the group's rendezvous store on a free port of this node; returns its address."""
        import ray

        from asyncopd.runtime.weight_transport import open_store  # (lazy: torch)

        self._group_store, address = open_store(ray.util.get_node_ip_address(), timeout_s, world=self.world)
        return address

    def join_group(self, address: str, backend: str, timeout_s: float) -> None:
        """Become rank ``rank`` of the learner's group (returns once every rank has joined) and
        wrap the model for the strategy (DDP starts every replica from rank 0's weights)."""
        from asyncopd.backends.torch_backend.data_parallel import DataParallel, join_default_group  # (lazy: torch)
        from asyncopd.runtime.weight_transport import connect_store  # (lazy: torch)

        store = self._group_store if self.rank == 0 else connect_store(address, timeout_s, world=self.world)
        join_default_group(store, self.rank, self.world, backend, timeout_s)
        self._build(DataParallel(self.strategy, self.learner_device()))

    def learner_device(self) -> Any:
        import torch

        return torch.device(self.device)

    # ------------------------------------------------------------ updates
    def train(self, step: int, batch: list[TrainItem], total_tokens: int | None = None,
              ) -> tuple[dict[str, float], dict[str, Any], float, float]:
        """One update (this rank's shard of it), then publish the new version (``_publish``)."""
        started, cpu0 = time.time(), time.thread_time()
        if self.learner.version != step:
            raise RuntimeError(f"learner is at version {self.learner.version} but was asked for step {step}")
        metrics = self.learner.train_step(batch, total_tokens).as_dict()
        cpu = cpu_seconds(self.device, cpu0)  # (this rank's compute; waiting on the all-reduce is not in it)
        if cpu is not None:
            metrics["cpu_s"] = cpu
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
            state = self.learner.weights_for_sync()  # (FSDP: every rank gathers)
            if self.rank != 0:
                return dict(EMPTY_PUBLICATION)
            return {"holder": [ray.put(state)], "digest": weights_digest(state) if self.verify_sync else None}
        state = self._live_weights()
        if self.rank != 0:
            return dict(EMPTY_PUBLICATION)
        buckets = self.layout.pack(state, self.device)
        digest = weights_digest(self.layout.unpack(buckets)) if self.verify_sync else None
        with self._snapshot_lock:
            self._snapshots[version] = (buckets, digest)
            for old in [v for v in self._snapshots if v < version - 1]:
                del self._snapshots[old]
        return {"holder": [], "digest": digest}

    def _live_weights(self) -> dict[str, Any]:
        """The full weights without an extra copy where rank 0 holds them whole (FSDP gathers)."""
        if self.strategy == "fsdp" and self.world > 1:
            return self.learner.weights_for_sync()
        return self.model.state_dict() if self.rank == 0 else {}

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

    # ------------------------------------------------------------ evaluation and saving (every rank calls these)
    def _whole_model(self) -> Any:
        """The student as one module on rank 0 (FSDP: an unsharded copy loaded with the gathered
        weights; every rank takes part in the gather); ``None`` on the other ranks."""
        if not (self.strategy == "fsdp" and self.world > 1):
            return self.model if self.rank == 0 else None
        import torch

        from asyncopd.models import load_causal_lm  # (lazy: torch)

        weights = self.learner.weights_for_sync()
        if self.rank != 0:
            return None
        if self._plain is None:
            self._plain = load_causal_lm(self.model_path, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            self._plain.load_state_dict(weights, strict=True)
        return self._plain

    def evaluate(self, task_cfg: dict[str, Any], seed: int, codec_dir: str) -> dict[str, float]:
        """Greedy held-out accuracy of the current student on the built-in task (eval split)."""
        from dataclasses import asdict

        from asyncopd.models import evaluate  # (lazy: torch, in the actor's process)

        model = self._whole_model()
        if model is None:
            return {}
        task = BuiltinTask(TaskConfig.model_validate(task_cfg), seed=seed)
        return asdict(evaluate(model, load_codec(codec_dir), task))

    def save(self, path: str, codec_dir: str) -> str:
        """Save the student as a Hugging Face checkpoint directory, with the codec/tokenizer files."""
        model = self._whole_model()
        if model is not None:
            _save_hf(model, path, codec_dir)
        return path

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
            seconds = self.write_checkpoint(str(tmp_dir(root, step_name(v))), codec_dir)["seconds"]
            if self.rank == 0:
                metrics["checkpoint_s"] = seconds

    def write_checkpoint(self, path: str, codec_dir: str) -> dict[str, Any]:
        """The student as a Hugging Face directory (``save``) plus ``trainer_state.pt`` (weights,
        optimizer state keyed by parameter name, version) in ``path``, which is replaced if it exists."""
        import shutil
        from pathlib import Path

        import torch

        t0 = time.time()
        state = self.learner.state_dict()  # (data parallel: every rank takes part, rank 0 gets it whole)
        model = self._whole_model()
        if self.rank == 0:
            out = Path(path)
            if out.exists():
                shutil.rmtree(out)
            _save_hf(model, path, codec_dir)
            torch.save(state, out / STATE_FILE)
        return {"version": self.learner.version, "path": path, "seconds": time.time() - t0}

    def load_checkpoint(self, path: str) -> tuple[int, dict[str, Any]]:
        """Continue from ``path/trainer_state.pt`` (written with any number of ranks): weights,
        optimizer state, version. The optimizer's hyper-parameters stay those of this run's
        config. Rank 0 reads the file and the group shares it. Returns the version and its
        publication (as ``train`` does)."""
        from pathlib import Path

        import torch

        state = torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True) if self.rank == 0 else {}
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.learner.optimizer.param_groups]
        self.learner.load_state_dict(state)
        for g, h in zip(self.learner.optimizer.param_groups, hyper):  # (new group dicts after loading)
            g.update(h)
        return self.learner.version, self._publish()


def _save_hf(model: Any, path: str, codec_dir: str) -> None:
    """``model`` as a Hugging Face directory at ``path``, with the codec/tokenizer files of ``codec_dir``."""
    import shutil
    from pathlib import Path

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_transformers():  # (no "Writing model shards" bar at every checkpoint)
        model.save_pretrained(out)
    for f in Path(codec_dir).iterdir():
        weights_or_config = f.suffix in (".safetensors", ".bin") or f.name in ("config.json", "generation_config.json")
        if f.is_file() and not weights_or_config and not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
