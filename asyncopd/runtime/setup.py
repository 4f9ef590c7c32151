"""Start-up for the real trainer: resolve (build or load) the models, start or join Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncopd.backends.vllm_backend import vllm_available
from asyncopd.config.schema import ModelSpec, OPDConfig
from asyncopd.models.builtin import resolve_model
from asyncopd.models.loading import load_codec


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
    for role in ("rollout", "teacher"):
        if getattr(cfg, role).backend != "vllm":
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
