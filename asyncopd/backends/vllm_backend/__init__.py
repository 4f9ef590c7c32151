"""The vLLM backend: rollout (``VllmRolloutEngine``) and teacher scoring (``VllmTeacherScorer``)
on ``vllm.LLM``, GPU only. The learner stays on the torch backend.

Written against vLLM's public API (``LLM``, ``SamplingParams``, ``LLM.apply_model``,
``LLM.reset_prefix_cache``, ``prompt_logprobs``, ``logprobs_mode``) but not run in this project's
CI, which has no GPU. See ``docs/backends.md`` for what it supports and refuses.

Importing this package does not import vllm (nor torch): the classes are loaded on first access
and import vllm in their constructors, which raise ``ImportError`` with the install hint when it is
missing. ``vllm_available()`` checks without importing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asyncopd.backends.vllm_backend.convert import vllm_available

if TYPE_CHECKING:  # pragma: no cover
    from asyncopd.backends.vllm_backend.rollout import VllmRolloutEngine
    from asyncopd.backends.vllm_backend.teacher import VllmTeacherScorer

__all__ = ["VllmRolloutEngine", "VllmTeacherScorer", "vllm_available"]


def __getattr__(name: str) -> Any:
    if name == "VllmRolloutEngine":  # (lazy: importing the package must not import vllm)
        from asyncopd.backends.vllm_backend.rollout import VllmRolloutEngine

        return VllmRolloutEngine
    if name == "VllmTeacherScorer":  # (lazy, as above)
        from asyncopd.backends.vllm_backend.teacher import VllmTeacherScorer

        return VllmTeacherScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
