"""Models: the built-in tiny teacher/student (trained once, cached), loading, evaluation.

Public API (torch and transformers are imported on first use of a name that needs them;
``import asyncopd.models.presets`` alone stays torch-free)::

    resolve_model(preset_or_path, task_cfg=None, *, seed=0, cache_dir=None, progress=True) -> pathlib.Path
    load_causal_lm(path, *, dtype="float32", device="cpu") -> transformers causal LM (eval mode)
    load_codec(path) -> TextCodec (CharCodec if the directory has asyncopd_codec.json, else HFTokenizerCodec)
    evaluate(model, codec, task, *, n=None, split="eval", batch_size=100, max_new_tokens=None) -> EvalResult
    evaluate_accuracy(model, codec, task, n=None, split="eval", batch_size=100, max_new_tokens=None) -> float
    build_info(path) -> dict (asyncopd_build.json of a built-in model; {} otherwise)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUILD_INFO": "builtin", "build_info": "builtin", "builtin_dir": "builtin", "cache_root": "builtin",
    "is_builtin": "builtin", "resolve_model": "builtin", "validate_checkpoint_dir": "builtin",
    "EvalResult": "evaluation", "evaluate": "evaluation", "evaluate_accuracy": "evaluation",
    "greedy_generate": "evaluation",
    "HFTokenizerCodec": "hf_codec", "char_codec_to_hf": "hf_codec",
    "load_causal_lm": "loading", "load_codec": "loading",
    "PRESETS": "presets", "RECIPE_VERSION": "presets", "STUDENT": "presets", "TEACHER": "presets",
    "Arch": "presets", "Preset": "presets", "Recipe": "presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'asyncopd.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"asyncopd.models.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
