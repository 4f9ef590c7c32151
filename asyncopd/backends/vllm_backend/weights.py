"""Loading a state dict into a running ``vllm.LLM`` in place (no vllm import here).

One route, vLLM's weight-reload API (read in ``vllm/entrypoints/llm.py``: ``LLM.collective_rpc``;
``vllm/v1/worker/gpu_worker.py``: ``Worker.reload_weights``, which hands its arguments to
``vllm/v1/worker/gpu_model_runner.py``: ``GPUModelRunner.reload_weights(weights_iterator=None,
weights_path=None, is_checkpoint_format=True)``; documented in vLLM's ``docs/training/layerwise.md``):

    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": [(name, tensor), ...],
                                                  "is_checkpoint_format": True})

runs ``reload_weights`` on every worker (every tensor-parallel rank). With
``is_checkpoint_format=True`` the tensors are Hugging Face-named and whole, exactly the student's
``state_dict()``; each rank's ``model.load_weights`` shards and fuses them itself, inside vLLM's
layerwise reload (which also redoes any post-load processing). The method is named by string, so
no callable is pickled and ``VLLM_ALLOW_INSECURE_SERIALIZATION`` is not needed (the earlier
version of this module shipped a function through ``LLM.apply_model``).

After the reload, ``LLM.reset_prefix_cache()`` drops KV blocks the old weights computed
(otherwise a later request sharing a prefix would reuse them). An ``LLM`` without
``collective_rpc`` is older than the pinned range: ``RuntimeError`` naming the version.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger(__name__)

RELOAD_METHOD = "reload_weights"


def load_weights_into_llm(llm: Any, state_dict: Mapping[str, Any], version_str: str = "unknown") -> int:
    """Load ``state_dict`` into a running ``vllm.LLM`` in place and reset its prefix cache;
    returns the number of workers that reloaded."""
    rpc = getattr(llm, "collective_rpc", None)
    if rpc is None:
        raise RuntimeError(f"vLLM {version_str}: vllm.LLM has no collective_rpc, so its weights cannot be reloaded in "
                           "place; install the version asyncopd[vllm] pins (docs/backends.md)")
    items = [(str(k), v) for k, v in dict(state_dict).items()]
    results = rpc(RELOAD_METHOD, kwargs={"weights_iterator": items, "is_checkpoint_format": True})
    reset = getattr(llm, "reset_prefix_cache", None)
    if reset is None or reset() is False:
        log.warning("vLLM %s: prefix cache not reset after a weight update; cached KV of the old weights may be "
                    "reused", version_str)
    return len(results) if isinstance(results, list) else 1
