"""Start-up for the real trainer: resolve (build or load) the models, start or join Ray, start the actors."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopd.backends.vllm_backend import vllm_available
from asyncopd.config.memory_shares import worker_shares
from asyncopd.config.placement import placement as layout_placement
from asyncopd.config.schema import ModelSpec, OPDConfig
from asyncopd.models.builtin import resolve_model
from asyncopd.models.loading import load_codec
from asyncopd.runtime import actors
from asyncopd.runtime.learner_actor import LearnerWorker
from asyncopd.runtime.learner_group import LearnerGroup


@dataclass
class ResolvedModels:
    student: Path
    teacher: Path
    codec: Any  # asyncopd.task.TextCodec


def check_trainable(cfg: OPDConfig) -> None:
    """What the simulator accepts but the trainer cannot run, refused before anything starts."""
    for role in ("student", "teacher"):
        spec: ModelSpec = getattr(cfg.models, role)
        if not spec.trainable:
            raise ValueError(f"models.{role}: preset {spec.preset!r} describes an architecture for the simulator "
                             f"only; to train, give models.{role}.path (a local checkpoint) or a builtin preset")
    if cfg.layout.learner.tp > 1:
        raise ValueError(f"layout.learner.tp={cfg.layout.learner.tp}: the trainer's learner has no tensor "
                         "parallelism; give it more devices instead (one data-parallel rank each, learner.strategy)")
    for role in ("rollout", "teacher"):
        if getattr(cfg, role).backend != "vllm":
            tp = getattr(cfg.layout, role).tp
            if tp > 1:  # (here, not in the schema: simulate and plan model tp > 1 for any backend)
                raise ValueError(f"layout.{role}.tp={tp}: the torch backend runs a worker on one device and has no "
                                 f"tensor parallelism; use {role}.backend=vllm, or tp=1 with more workers "
                                 f"(layout.{role}.workers)")
            continue
        if cfg.cluster.device_type != "cuda":
            raise ValueError(f"{role}.backend=vllm needs cluster.device_type=cuda (vLLM runs on GPUs); use "
                             f"{role}.backend=torch on CPU")
        if not vllm_available():
            raise ValueError(f"{role}.backend=vllm but vllm is not installed: pip install 'asyncopd[vllm]' on a "
                             "CUDA machine (written against vLLM's API, not run in this project's CI; "
                             "see docs/backends.md)")


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


def start_ray(cfg: OPDConfig) -> bool:
    """Join ``cluster.ray_address`` or start a local Ray bound to localhost without a dashboard.
    Returns True when this call started (and so must shut down) Ray."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    for k, v in quiet.items():
        os.environ.setdefault(k, v)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": True, "log_to_driver": True,
                              "runtime_env": {"env_vars": quiet}}
    if cfg.cluster.ray_address:
        ray.init(address=cfg.cluster.ray_address, **kwargs)
    else:
        resources = {"num_cpus": cfg.cluster.num_devices} if cfg.cluster.device_type == "cpu" else {}
        ray.init(_node_ip_address="127.0.0.1", **resources, **kwargs)
    return True


def start_actors(cfg: OPDConfig, models: ResolvedModels) -> tuple[dict[str, Any], dict[str, Any], LearnerGroup]:
    """Create the Ray actors of ``cfg.layout`` on their devices: the rollout workers and the
    teachers (each by worker name) and the learner, one rank per learner device. Returns their
    handles; they are not ready until their ``ready`` calls return, and the learner's ranks
    form their group with ``LearnerGroup.form``."""
    import ray

    lay, algo = cfg.layout, cfg.algorithm
    dt, dtype = cfg.cluster.device_type, cfg.models.dtype
    where = layout_placement(lay)  # each worker's own devices, exactly as the simulator places it
    gpu = 1.0 / max(1, lay.rollout.workers + lay.teacher.workers + 1) if dt == "cuda" else 0
    opts = {"num_cpus": 0, "num_gpus": gpu}
    Rollout, Teacher = ray.remote(actors.RolloutWorker), ray.remote(actors.TeacherWorker)
    method = cfg.sync.resolved(cfg.rollout.backend)
    collective = method == "collective"  # (threaded: serving a version overlaps the next update)
    Learner = ray.remote(LearnerWorker).options(**opts, **(
        {"max_concurrency": lay.rollout.workers + 2} if collective else {}))
    Follower = ray.remote(LearnerWorker).options(**opts)  # data-parallel ranks 1..N-1: one call at a time
    rollout = {
        f"rollout-{i}": Rollout.options(**{"max_concurrency": 4, **opts, **_vllm_actor(cfg, "rollout", i)}).remote(
            f"rollout-{i}", str(models.student), device_type=dt, devices=list(where[f"rollout-{i}"]),
            eos_id=models.codec.eos_id, pad_id=models.codec.pad_id, max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, seed=cfg.run.seed * 1000 + i, dtype=dtype,
            capture_top_k=algo.rollout_top_k(), capture_mc=algo.rollout_mc_samples(), backend=cfg.rollout.backend,
            **_vllm_options(cfg, "rollout", i))
        for i in range(lay.rollout.workers)
    }
    teachers = {
        f"teacher-{i}": Teacher.options(**{**opts, **_vllm_actor(cfg, "teacher", i)}).remote(f"teacher-{i}", str(models.teacher), device_type=dt,
                                       devices=list(where[f"teacher-{i}"]), top_k=cfg.teacher.top_k,
                                       pad_id=models.codec.pad_id, dtype=dtype, num_samples=algo.teacher_samples(),
                                       full_vocab=algo.spec.teacher_full, seed=cfg.run.seed * 1000 + 500 + i,
                                       backend=cfg.teacher.backend, **_vllm_options(cfg, "teacher", i))
        for i in range(lay.teacher.workers)
    }
    lc = cfg.learner
    options = dict(device_type=dt, lr=lc.lr, weight_decay=lc.weight_decay, grad_clip=lc.grad_clip,
                   micro_batch_size=lc.micro_batch_size, warmup_steps=lc.warmup_steps, dtype=dtype,
                   decay_steps=cfg.run.total_steps if lc.lr_schedule == "cosine" else 0, min_lr_ratio=lc.min_lr_ratio,
                   algorithm=algo.model_dump(), sync_method=method, sync_bucket_bytes=cfg.sync.bucket_bytes,
                   verify_sync=cfg.sync.verify, world=len(lay.learner.devices), strategy=lc.strategy)
    ranks = [(Learner if r == 0 else Follower).remote(str(models.student), devices=[d], rank=r, **options)
             for r, d in enumerate(lay.learner.devices)]
    return rollout, teachers, LearnerGroup(ranks)


def _vllm_options(cfg: OPDConfig, role: str, index: int) -> dict[str, Any]:
    """Engine sizing the vLLM backend takes from the config (nothing for torch): the worker's memory
    share (``config/memory_shares.py``), tp, KV-cache size and extra engine arguments."""
    rc = getattr(cfg, role)
    if rc.backend != "vllm":
        return {}
    opts: dict[str, Any] = {"gpu_memory_utilization": worker_shares(cfg)[f"{role}-{index}"],
                            "tensor_parallel_size": getattr(cfg.layout, role).tp,
                            "kv_cache_gb": rc.kv_cache_gb, "engine_args": dict(rc.engine_args)}
    if role == "rollout":
        opts["max_num_seqs"] = cfg.rollout.max_num_seqs
    return opts


def _vllm_actor(cfg: OPDConfig, role: str, index: int) -> dict[str, Any]:
    """Ray options of a vLLM worker's actor (nothing for torch): its share of one GPU (tp = 1), or
    a placement group of ``tp`` GPU bundles on one node it drives the engine from
    (``backends/vllm_backend/placement.py``)."""
    if getattr(cfg, role).backend != "vllm":
        return {}
    from asyncopd.backends.vllm_backend.placement import actor_options, engine_placement  # (lazy: ray)

    name = f"{role}-{index}"
    return actor_options(engine_placement(getattr(cfg.layout, role).tp, worker_shares(cfg)[name]), name)
