"""Resolve a model spec to a local checkpoint directory; build and cache the built-in presets.

``resolve_model("builtin-teacher", task_cfg)`` trains the tiny teacher once and caches it;
later calls (any process) return the cached directory. The cache key hashes everything that
determines the weights: the task config, the preset's architecture and recipe, the codec,
the seed and ``RECIPE_VERSION``. A build holds an ``fcntl`` lock on a per-key lock file,
writes into a temporary directory next to the final one and renames it into place, so a
concurrent caller either waits for the build or sees a complete directory, never half of one.

Cache root: ``cache_dir`` argument, else ``$ASYNCOPD_CACHE``, else ``~/.cache/asyncopd``;
models live under ``<root>/models/<preset>-<key>/``.

A built directory holds the Hugging Face ``save_pretrained`` files (``config.json``,
``model.safetensors``, ``generation_config.json``), the character codec
(``asyncopd_codec.json``), an equivalent HF tokenizer (``tokenizer.json``, for tools that
only speak Hugging Face) and ``asyncopd_build.json`` (what was built, how long it took, its
held-out accuracy). ``asyncopd_build.json`` is written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from asyncopd.models.presets import PRESETS, RECIPE_VERSION, Preset
from asyncopd.task.builtin import TASK_VERSION, BuiltinTask
from asyncopd.task.codec import CharCodec
from asyncopd.task.config import TaskConfig

BUILD_INFO = "asyncopd_build.json"


def cache_root(cache_dir: Optional[str | os.PathLike[str]] = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ASYNCOPD_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "asyncopd"


def is_builtin(preset_or_path: str) -> bool:
    return str(preset_or_path) in PRESETS


def cache_key(preset: Preset, task_cfg: TaskConfig, seed: int) -> str:
    material = {
        "recipe_version": RECIPE_VERSION,
        "task_version": TASK_VERSION,
        "preset": preset.key_material(),
        "task": task_cfg.model_dump(mode="json"),
        "codec": CharCodec().to_dict(),
        "seed": int(seed),
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def builtin_dir(preset_name: str, task_cfg: TaskConfig, *, seed: int = 0,
                cache_dir: Optional[str | os.PathLike[str]] = None) -> Path:
    """Where ``resolve_model`` puts (or finds) a built-in preset; nothing is built."""
    preset = _preset(preset_name)
    return cache_root(cache_dir) / "models" / f"{preset.name}-{cache_key(preset, task_cfg, seed)}"


def is_complete(path: Path) -> bool:
    return (path / BUILD_INFO).is_file() and (path / "config.json").is_file()


def build_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``asyncopd_build.json`` of a built-in model directory ({} for other checkpoints)."""
    p = Path(path) / BUILD_INFO
    return json.loads(p.read_text()) if p.is_file() else {}


def resolve_model(preset_or_path: str | os.PathLike[str], task_cfg: Optional[TaskConfig] = None, *,
                  seed: int = 0, cache_dir: Optional[str | os.PathLike[str]] = None,
                  progress: bool = True) -> Path:
    """A local checkpoint directory for a built-in preset name or a user path.

    Built-in presets (``builtin-teacher``, ``builtin-student``) are trained on first use and
    cached; a user path must be a directory with ``config.json`` (returned resolved)."""
    spec = str(preset_or_path)
    if is_builtin(spec):
        return _resolve_builtin(_preset(spec), task_cfg if task_cfg is not None else TaskConfig(),
                                seed=seed, cache_dir=cache_dir, progress=progress)
    if spec.startswith("builtin-") and not Path(spec).expanduser().exists():
        raise ValueError(f"unknown built-in model {spec!r}; built-ins: {', '.join(PRESETS)}")
    return validate_checkpoint_dir(spec)


def validate_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path {str(p)!r} does not exist (expected a local Hugging Face "
                                f"checkpoint directory with config.json)")
    if not p.is_dir():
        raise FileNotFoundError(f"model path {str(p)!r} is not a directory (expected a local Hugging Face "
                                f"checkpoint directory with config.json)")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model path {str(p)!r} has no config.json (expected a local Hugging Face "
                                f"checkpoint directory)")
    return p.resolve()


# ----------------------------------------------------------------------------- internals
def _preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown built-in model {name!r}; built-ins: {', '.join(PRESETS)}") from None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _resolve_builtin(preset: Preset, task_cfg: TaskConfig, *, seed: int,
                     cache_dir: Optional[str | os.PathLike[str]], progress: bool) -> Path:
    final = builtin_dir(preset.name, task_cfg, seed=seed, cache_dir=cache_dir)
    if is_complete(final):
        return final
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_complete(final):  # another process finished it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            _build(preset, task_cfg, seed=seed, out=tmp, progress=progress)
            if final.exists():  # a leftover without its build file (should not happen): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _build(preset: Preset, task_cfg: TaskConfig, *, seed: int, out: Path, progress: bool) -> dict[str, Any]:
    """Train ``preset`` and write its checkpoint into ``out`` (an empty directory)."""
    import torch

    # (lazy: torch and transformers load only when a model is built; a cache hit never needs them)
    from asyncopd.models.evaluation import evaluate
    from asyncopd.models.hf_codec import char_codec_to_hf
    from asyncopd.models.training import build_llama

    t0 = time.perf_counter()
    task = BuiltinTask(task_cfg, seed=seed)
    codec = task.codec
    recipe = preset.recipe
    attempts: list[dict[str, Any]] = []
    best: Optional[tuple[float, Any, dict[str, Any]]] = None
    for attempt in range(max(1, recipe.max_attempts)):
        init_seed = seed + 1000 * attempt
        candidate = build_llama(preset.arch, codec, seed=init_seed, init_std=recipe.init_std)
        clog = _train(candidate, task, codec, preset, seed=init_seed, progress=progress)
        attempts.append({"seed": init_seed, "steps": clog["steps"], "check_accuracy": clog["check_accuracy"]})
        acc = clog["check_accuracy"]
        if best is None or (acc is not None and acc > best[0]):
            best = (acc if acc is not None else -1.0, candidate, clog)
        if recipe.accept_accuracy is None or acc is None or acc >= recipe.accept_accuracy:
            break
    assert best is not None
    _, model, log = best
    t_train = time.perf_counter() - t0
    ev = evaluate(model, codec, task, n=task_cfg.eval_prompts, split="eval")
    with _quiet_transformers():
        model.save_pretrained(str(out))
    codec.save(out)
    char_codec_to_hf(codec).save_pretrained(str(out))
    info = {
        "preset": preset.name,
        "description": preset.description,
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "task": task_cfg.model_dump(mode="json"),
        "arch": preset.arch.as_dict(),
        "recipe": preset.recipe.as_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "train_steps": log["steps"],
        "attempts": attempts,
        "train_seconds": round(t_train, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "final_loss": log["final_loss"],
        "check_accuracy": log["check_accuracy"],
        "eval": ev.as_dict(),
        "torch": torch.__version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" / "Loading weights" progress bars for sub-MB checkpoints."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _train(model, task, codec, preset: Preset, *, seed: int, progress: bool) -> dict[str, Any]:
    # Indirection point: tests monkeypatch this to prove a cache hit does not train.
    from asyncopd.models.training import train_supervised  # (lazy: torch)

    return train_supervised(model, task, codec, preset.recipe, seed=seed, progress=progress,
                            desc=f"building {preset.name}")
