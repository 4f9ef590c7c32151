"""Loading a state dict into a running ``vllm.LLM`` in place (no vllm import here).

Routes, probed in order with ``hasattr`` (the first is vLLM's public API since 0.6.5):

1. ``LLM.apply_model(fn)``: runs ``fn(model)`` in every worker; ``fn`` calls
   ``model.load_weights(iter((name, tensor), ...))``. vLLM's ``load_weights`` takes Hugging Face
   parameter names and full (unsharded) tensors and does the tensor-parallel sharding and the
   fused-projection stacking itself; the copy casts to the engine's dtype.
2. ``LLM.collective_rpc(fn, args=(items,))``: ``fn(worker, items)`` on every worker, same load.
3. The V0 engine's in-process model, ``llm.llm_engine.model_executor.driver_worker.model_runner.model``.

Neither present: ``RuntimeError`` naming the vLLM version. After loading, ``LLM.reset_prefix_cache()``
drops KV blocks computed by the old weights (otherwise a later request sharing a prefix would
reuse them). In vLLM's V1 engine the callable and the tensors travel to the engine process by
pickle, which needs ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (``VllmRolloutEngine`` sets it).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

log = logging.getLogger(__name__)

def _load_into_model(items: list[tuple[str, Any]], model: Any) -> None:
    """Runs inside each vLLM worker (``LLM.apply_model``): ``load_weights`` takes HF-named full
    tensors and shards/stacks them itself (tensor parallelism, fused qkv)."""
    model.load_weights(iter(items))


def _load_into_worker(worker: Any, items: list[tuple[str, Any]]) -> None:
    """``LLM.collective_rpc`` variant: called with the worker object."""
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.model
    model.load_weights(iter(items))


def load_weights_into_llm(llm: Any, state_dict: Mapping[str, Any], version_str: str = "unknown") -> str:
    """Load ``state_dict`` into a running ``vllm.LLM`` in place and reset its prefix cache;
    returns which route was used."""
    items = [(str(k), v) for k, v in dict(state_dict).items()]
    if hasattr(llm, "apply_model"):
        llm.apply_model(functools.partial(_load_into_model, items))
        route = "apply_model"
    elif hasattr(llm, "collective_rpc"):
        llm.collective_rpc(_load_into_worker, args=(items,))
        route = "collective_rpc"
    else:
        try:
            model = llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            raise RuntimeError(
                f"vLLM {version_str}: cannot load weights in place: vllm.LLM has neither apply_model nor "
                "collective_rpc, and llm.llm_engine.model_executor.driver_worker.model_runner.model does not "
                "exist. Use a vLLM version with LLM.apply_model (asyncopd[vllm] pins one)") from None
        model.load_weights(iter(items))
        route = "v0_driver_worker"
    reset = getattr(llm, "reset_prefix_cache", None)
    if reset is None or reset() is False:
        log.warning("vLLM %s: prefix cache not reset after a weight update; cached KV of the old weights may be "
                    "reused", version_str)
    return route
