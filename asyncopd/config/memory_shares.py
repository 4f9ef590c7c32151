"""Memory budget per worker when roles share a GPU (pure Python: the config check and the driver use it).

A vLLM engine sizes itself from ``gpu_memory_utilization``: the fraction of the device's memory
this one engine may hold (weights, activations, KV cache; vLLM calls it a per-instance limit).
Two engines, or an engine and the learner, on one GPU therefore need fractions that add up to
at most 1, or the second one to start finds less free memory than it was promised and fails.

Each worker of a layout (names and devices from ``asyncopd.config.placement``) gets a *share*:

- set: ``rollout.memory_share`` / ``teacher.memory_share`` (per worker of the role) and
  ``learner.memory_share`` (the learner, on each of its devices);
- unset, alone on its devices: ``rollout.gpu_memory_utilization`` for a rollout or teacher worker
  (the field predates the shares and keeps its meaning there), 1.0 for the learner;
- unset, sharing a device: an equal split of what the set shares leave on that device, the
  smallest over the worker's devices (a tp worker holds the same amount on each of its GPUs).

``check_shares`` refuses a layout whose set shares on one device add up to more than 1, or leave
nothing for a worker without one. The share of a vLLM worker is its engine's
``gpu_memory_utilization`` and its fractional GPU in Ray (``vllm_backend/placement.py``), so Ray
never places more on a device than the shares allow. ``kv_cache_gb`` fixes the KV cache instead
(vLLM's ``kv_cache_memory_bytes``); the share still reserves the device memory in the sum.
"""

from __future__ import annotations

from typing import Any

from asyncopd.config.placement import placement

# Engine arguments another field sets; engine_args may not override them (field that sets each).
RESERVED_ENGINE_ARGS: dict[str, str] = {
    "model": "models.student / models.teacher",
    "tensor_parallel_size": "layout.<role>.tp",
    "pipeline_parallel_size": "the layout (one engine per tp group; pipeline parallelism is not supported)",
    "distributed_executor_backend": "layout.<role>.tp (ray when tp > 1)",
    "placement_group": "the trainer's placement (asyncopd/backends/vllm_backend/placement.py)",
    "gpu_memory_utilization": "<role>.memory_share (or rollout.gpu_memory_utilization)",
    "kv_cache_memory_bytes": "<role>.kv_cache_gb",
}

SOLO_LEARNER_SHARE = 1.0


def check_engine_args(role: str, args: dict[str, Any]) -> dict[str, Any]:
    """``<role>.engine_args`` passes through to ``vllm.LLM`` unchanged, except the arguments that
    another field owns (``RESERVED_ENGINE_ARGS``): refused with the field to use instead."""
    for key in args:
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{key!r} is not a vLLM engine argument name")
        if key in RESERVED_ENGINE_ARGS:
            where = RESERVED_ENGINE_ARGS[key].replace("<role>", role)
            raise ValueError(f"{key}: set by {where}, not through {role}.engine_args")
    return dict(args)


def _set_share(cfg: Any, name: str) -> float | None:
    role = name.split("-")[0]
    return getattr(cfg, role).memory_share


def _field(name: str) -> str:
    return f"{name.split('-')[0]}.memory_share"


def workers_by_device(cfg: Any) -> dict[int, list[str]]:
    """Layout device -> the workers (``rollout-i``, ``teacher-i``, ``learner-0``) that run on it."""
    out: dict[int, list[str]] = {}
    for name, devices in placement(cfg.layout).items():
        for d in devices:
            out.setdefault(int(d), []).append(name)
    return out


def check_shares(cfg: Any) -> None:
    """Per device: the set shares add up to <= 1, and leave room for the workers without one."""
    for device, names in sorted(workers_by_device(cfg).items()):
        set_shares = {n: _set_share(cfg, n) for n in names if _set_share(cfg, n) is not None}
        total = sum(set_shares.values())  # type: ignore[arg-type]
        if total > 1 + 1e-9:
            parts = " + ".join(f"{_field(n)} {s:g} ({n})" for n, s in set_shares.items())
            raise ValueError(f"memory shares on layout device {device} add up to {total:.3g} > 1: {parts}")
        unset = [n for n in names if n not in set_shares]
        if unset and total >= 1 - 1e-9:
            raise ValueError(f"{_field(unset[0])}: the set shares on layout device {device} use all of its memory, "
                             f"none is left for {', '.join(unset)}; give {_field(unset[0])} or lower the others")


def worker_shares(cfg: Any) -> dict[str, float]:
    """Worker name -> its share of each of its devices' memory (module docstring for the rules).
    Assumes ``check_shares`` passed (the config loader runs it)."""
    by_device = workers_by_device(cfg)
    out: dict[str, float] = {}
    for name, devices in placement(cfg.layout).items():
        own = _set_share(cfg, name)
        if own is not None:
            out[name] = float(own)
            continue
        if all(by_device[int(d)] == [name] for d in devices):  # alone on every one of its devices
            out[name] = SOLO_LEARNER_SHARE if name.startswith("learner") else float(cfg.rollout.gpu_memory_utilization)
            continue
        splits = []
        for d in devices:
            names = by_device[int(d)]
            left = 1.0 - sum(_set_share(cfg, n) or 0.0 for n in names)
            splits.append(left / sum(1 for n in names if _set_share(cfg, n) is None))
        out[name] = min(splits)
    return out


def kv_cache_bytes(kv_cache_gb: float | None) -> int | None:
    """``<role>.kv_cache_gb`` as vLLM's ``kv_cache_memory_bytes`` (GiB, per device)."""
    return None if kv_cache_gb is None else int(kv_cache_gb * 2**30)
