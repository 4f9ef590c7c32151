"""The vLLM backend: rollout (``VllmRolloutEngine``) and teacher scoring (``VllmTeacherScorer``)
on ``vllm.LLM``, GPU only. The learner stays on the torch backend.

Written against vLLM's public API of the version ``pyproject.toml`` pins (``LLM``,
``SamplingParams``, ``LLM.collective_rpc("reload_weights")``, ``LLM.reset_prefix_cache``,
``prompt_logprobs``, ``logprobs_mode``, the Ray executor for tp > 1) but never run on a GPU.
Modules: ``rollout``/``teacher`` (the engines), ``weights`` (in-place reload), ``engine_args``
(``vllm.LLM`` arguments), ``placement`` (one GPU or a tp placement group), ``startup`` (engines
start one after another), ``convert`` (outputs to arrays). See ``docs/backends.md``.

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
