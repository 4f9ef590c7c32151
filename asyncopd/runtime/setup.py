"""Start-up for the real trainer: resolve (build or load) the models, start or join Ray, start the actors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopd.backends.vllm_backend import vllm_available
from asyncopd.backends.vllm_backend.startup import start_in_waves, startup_waves
from asyncopd.config.actor_placement import ActorPlace, learner_rank_name, plan_actors
from asyncopd.config.schema import ModelSpec, OPDConfig
from asyncopd.models.builtin import resolve_model
from asyncopd.models.loading import load_codec
from asyncopd.runtime import actors
from asyncopd.runtime.learner_actor import LearnerWorker
from asyncopd.runtime.learner_group import LearnerGroup
from asyncopd.runtime.placement_groups import actor_options, cluster_nodes, release, reserve


@dataclass
class ResolvedModels:
    student: Path
    teacher: Path
    codec: Any  # asyncopd.task.TextCodec


def check_trainable(cfg: OPDConfig) -> None:
    """What the simulator accepts but the trainer cannot run, refused before anything starts."""
    check_layout_runnable(cfg)
    missing = missing_for_training(cfg)
    if missing:
        raise ValueError(missing[0])


def check_layout_runnable(cfg: OPDConfig) -> None:
    """The layout's part of ``check_trainable`` (what ``train --dry-run`` refuses): tensor
    parallelism only where a backend has it, vLLM only on GPUs, workers within one node
    (``config/actor_placement.py``)."""
    if cfg.layout.learner.tp > 1:
        raise ValueError(f"layout.learner.tp={cfg.layout.learner.tp}: the trainer's learner has no tensor "
                         "parallelism; give it more devices instead (one data-parallel rank each, learner.strategy)")
    for role in ("rollout", "teacher"):
        tp = getattr(cfg.layout, role).tp
        if getattr(cfg, role).backend != "vllm" and tp > 1:  # (here, not in the schema: simulate and plan model it)
            raise ValueError(f"layout.{role}.tp={tp}: the torch backend runs a worker on one device and has no "
                             f"tensor parallelism; use {role}.backend=vllm, or tp=1 with more workers "
                             f"(layout.{role}.workers)")
        if getattr(cfg, role).backend == "vllm" and cfg.cluster.device_type != "cuda":
            raise ValueError(f"{role}.backend=vllm needs cluster.device_type=cuda (vLLM runs on GPUs); use "
                             f"{role}.backend=torch on CPU")
    plan_actors(cfg)


def missing_for_training(cfg: OPDConfig) -> list[str]:
    """What a real run needs beyond the layout: trainable models, vLLM where a role uses it."""
    out = []
    for role in ("student", "teacher"):
        spec: ModelSpec = getattr(cfg.models, role)
        if not spec.trainable:
            out.append(f"models.{role}: preset {spec.preset!r} describes an architecture for the simulator "
                       f"only; to train, give models.{role}.path (a local checkpoint) or a builtin preset")
    for role in ("rollout", "teacher"):
        if getattr(cfg, role).backend == "vllm" and not vllm_available():
            out.append(f"{role}.backend=vllm but vllm is not installed: pip install 'asyncopd[vllm]' on a "
                       "CUDA machine (written against vLLM's API, not run in this project's CI; see docs/backends.md)")
    return out


def _resolve(spec: ModelSpec, cfg: OPDConfig, progress: bool) -> Path:
    return resolve_model(spec.preset or spec.path, cfg.task, seed=cfg.run.seed, progress=progress)


def resolve_models(cfg: OPDConfig, *, progress: bool = True) -> ResolvedModels:
    """Built-in presets are trained once and cached; user paths are checked. Both models must
    share one vocabulary: OPD compares their distributions token by token."""
    check_trainable(cfg)
    teacher = _resolve(cfg.models.teacher, cfg, progress)
    student = _resolve(cfg.models.student, cfg, progress)
    codec, tcodec = load_codec(student), load_codec(teacher)
    if codec.vocab_size != tcodec.vocab_size:
        raise ValueError(f"models.student ({student}) and models.teacher ({teacher}) have different vocabularies "
                         f"({codec.vocab_size} vs {tcodec.vocab_size}); OPD needs a shared tokenizer")
    return ResolvedModels(student, teacher, codec)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_only() -> None:
    """Make the Ray this process starts or joins next use the loopback address for its node
    (``start_ray``), in this process and in the processes it starts."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:  # (read when ray is imported; services.get_node_ip_address reads the module's)
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def start_ray(cfg: OPDConfig) -> bool:
    """Join ``cluster.ray_address`` or start a local Ray without a dashboard, listening on
    loopback only. Returns True when this call started (and so must shut down) Ray.

    On Linux Ray takes the machine's address as the node's, and every Ray process (GCS, raylet,
    workers) then listens on all interfaces, ``_node_ip_address="127.0.0.1"`` notwithstanding
    (measured with Ray 2.60: ``ss -ltnp``). ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray
    use the loopback address for the node, and then every process listens on 127.0.0.1 only
    (``tests/test_exposure.py``). A local run sets it (its processes inherit it); so does
    joining a cluster at a loopback address (nodes started with ``--node-ip-address
    127.0.0.1``), which Ray would otherwise look for at the machine's address. Ray's token
    authentication (on by default since 2.5x) guards a cluster at a routable address."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.ray_address
    if not address or address.rsplit(":", 1)[0].strip("[]") in LOOPBACK:
        loopback_only()
    quiet = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    for k, v in quiet.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True, "log_to_driver": True,
                              "runtime_env": {"env_vars": quiet}}
    if address:
        ray.init(address=address, **kwargs)
    else:  # ("local": a new Ray even if this machine runs another one)
        resources = {"num_cpus": cfg.cluster.num_devices} if cfg.cluster.device_type == "cpu" else {}
        ray.init(address="local", _node_ip_address="127.0.0.1", **resources, **kwargs)
    return True


@dataclass
class Actors:
    """What ``start_actors`` started: handles by worker name, the learner, and where each runs."""

    rollout: dict[str, Any]
    teachers: dict[str, Any]
    learner: LearnerGroup
    places: dict[str, ActorPlace]
    nodes: list[Any]  # the Ray nodes the layout's node indices stand for
    groups: dict[int, Any]  # node index -> placement group (GPU layouts)

    def handles(self) -> dict[str, Any]:
        ranks = {learner_rank_name(r): h for r, h in enumerate(self.learner.ranks)}
        return {**self.rollout, **self.teachers, **ranks}

    def wait_ready(self) -> dict[str, dict[str, Any]]:
        """Wait until every actor is up; returns where each runs (``ready``: node, pid, cores,
        GPUs, device) with its node's index in the layout and its layout devices (run.json)."""
        import ray

        handles = self.handles()
        where = dict(zip(handles, ray.get([h.ready.remote() for h in handles.values()])))
        index = {n["NodeID"]: k for k, n in enumerate(self.nodes)}
        for name, w in where.items():
            w.update(node_index=index.get(w["node"]), layout_devices=list(self.places[name].devices))
        return where

    def stop(self) -> None:
        """End the actors and free their placement groups (also after a crash, on a shared Ray)."""
        import ray

        for handle in self.handles().values():
            ray.kill(handle)
        release(self.groups)
        self.groups = {}


def start_actors(cfg: OPDConfig, models: ResolvedModels) -> Actors:
    """Create the Ray actors of ``cfg.layout`` where ``config/actor_placement.py`` places them:
    the rollout workers and the teachers (each by worker name) and the learner, one rank per
    learner device. vLLM engines start in waves (``vllm_backend/startup.py``; each wave is ready
    before the next starts); otherwise nothing waits here: the actors are not ready until their
    ``ready`` calls return, and the learner's ranks form their group with ``LearnerGroup.form``."""
    import ray

    lay, algo, dtype = cfg.layout, cfg.algorithm, cfg.models.dtype
    places = {p.name: p for p in plan_actors(cfg)}
    nodes = cluster_nodes(cfg)
    groups = reserve(cfg, nodes)
    method = cfg.sync.resolved(cfg.rollout.backend)
    lc = cfg.learner
    learner_opts = dict(lr=lc.lr, weight_decay=lc.weight_decay, grad_clip=lc.grad_clip,
                        micro_batch_size=lc.micro_batch_size, warmup_steps=lc.warmup_steps, dtype=dtype,
                        decay_steps=cfg.run.total_steps if lc.lr_schedule == "cosine" else 0,
                        min_lr_ratio=lc.min_lr_ratio, algorithm=algo.model_dump(), sync_method=method,
                        sync_bucket_bytes=cfg.sync.bucket_bytes, verify_sync=cfg.sync.verify,
                        world=len(lay.learner.devices), strategy=lc.strategy)

    def create(name: str) -> Any:
        p = places[name]
        opts = actor_options(p, groups, nodes)
        common = dict(device_type=cfg.cluster.device_type, devices=list(p.local))
        if p.role == "learner":
            if p.index == 0 and method == "collective":  # (threaded: serving a version overlaps the next update)
                opts["max_concurrency"] = 2 * lay.rollout.workers + 2  # (+ a serve stuck on a dead worker each)
            return ray.remote(LearnerWorker).options(**opts).remote(str(models.student), rank=p.index, **common,
                                                                    **learner_opts)
        i = p.index
        opts.update(max_restarts=cfg.run.worker_restarts, max_task_retries=0)  # (runtime/worker_faults.py)
        if p.role == "rollout":
            return ray.remote(actors.RolloutWorker).options(max_concurrency=6, **opts).remote(
                name, str(models.student), **common, eos_id=models.codec.eos_id, pad_id=models.codec.pad_id,
                max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p, seed=cfg.run.seed * 1000 + i, dtype=dtype,
                capture_top_k=algo.rollout_top_k(), capture_mc=algo.rollout_mc_samples(), backend=cfg.rollout.backend,
                **_vllm_options(cfg, p))
        return ray.remote(actors.TeacherWorker).options(**opts).remote(
            name, str(models.teacher), **common, top_k=cfg.teacher.top_k, pad_id=models.codec.pad_id, dtype=dtype,
            num_samples=algo.teacher_samples(), full_vocab=algo.spec.teacher_full, seed=cfg.run.seed * 1000 + 500 + i,
            backend=cfg.teacher.backend, **_vllm_options(cfg, p))

    engines = [n for n, p in places.items() if p.role != "learner" and getattr(cfg, p.role).backend == "vllm"]
    waves = startup_waves({n: p.devices for n, p in places.items()}, engines)
    wait = (lambda hs: ray.get([h.ready.remote() for h in hs])) if engines else (lambda hs: None)
    handles = start_in_waves(waves, create, wait)
    ranks = [handles[learner_rank_name(r)] for r in range(len(lay.learner.devices))]
    return Actors(rollout={n: h for n, h in handles.items() if places[n].role == "rollout"},
                  teachers={n: h for n, h in handles.items() if places[n].role == "teacher"},
                  learner=LearnerGroup(ranks), places=places, nodes=nodes, groups=groups)


def _vllm_options(cfg: OPDConfig, place: ActorPlace) -> dict[str, Any]:
    """Engine sizing the vLLM backend takes from the config (nothing for torch): the worker's memory
    share (``config/memory_shares.py``), tp, the placement-group bundles of its devices, KV-cache
    size and extra engine arguments."""
    rc = getattr(cfg, place.role)
    if rc.backend != "vllm":
        return {}
    opts: dict[str, Any] = {"gpu_memory_utilization": place.share, "tensor_parallel_size": getattr(cfg.layout, place.role).tp,
                            "bundle_indices": list(place.bundles), "kv_cache_gb": rc.kv_cache_gb,
                            "engine_args": dict(rc.engine_args)}
    if place.role == "rollout":
        opts["max_num_seqs"] = cfg.rollout.max_num_seqs
    return opts
