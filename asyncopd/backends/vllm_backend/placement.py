"""How a vLLM engine uses the GPUs its worker was placed on: in-process on one, or ``tp`` Ray workers.

Written against vLLM's Ray executor as read in its source (``vllm/v1/executor/ray_executor.py``,
``ray_utils.py``, ``vllm/config/parallel.py``, ``vllm/engine/arg_utils.py``); never run on a GPU here.
Where the worker's actor runs is decided for every actor alike (``asyncopd/config/actor_placement.py``:
one placement group per node, a bundle ``{"GPU": 1}`` per layout device).

tp = 1
    The actor holds its share of its device's bundle (``num_gpus=share``; Ray makes that GPU
    visible) and the engine runs in the actor's process (``distributed_executor_backend="uni"``).

tp > 1
    vLLM starts one Ray worker process per tensor-parallel rank, each on its own GPU. The actor
    that drives the engine holds no GPU and sits in its node's placement group with
    ``placement_group_capture_child_tasks``; vLLM's engine arguments, seeing
    ``distributed_executor_backend="ray"``, take ``ray.util.get_current_placement_group()`` and
    put rank ``i`` on bundle ``VLLM_RAY_BUNDLE_INDICES[i]`` (the bundles of the worker's layout
    devices) with ``VLLM_RAY_PER_WORKER_GPUS`` of its GPU (the worker's memory share, so the ranks
    fit beside the other workers sharing those devices). Ray gives a zero-GPU actor an empty
    ``CUDA_VISIBLE_DEVICES``; the ranks pick their devices themselves, so the actor unsets it
    before the engine starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, MutableMapping, Sequence

RAY_EXECUTOR = "ray"
IN_PROCESS_EXECUTOR = "uni"


@dataclass(frozen=True)
class EnginePlacement:
    """What one vLLM engine needs from its placement (module docstring)."""

    tp: int
    share: float  # of each GPU's memory: gpu_memory_utilization, and each rank's Ray GPU fraction
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    engine_env: dict[str, str] = field(default_factory=dict)  # set in the actor before the engine starts
    unset_env: tuple[str, ...] = ()  # removed in the actor before the engine starts


def engine_placement(tp: int, share: float, bundle_indices: Sequence[int] | None = None) -> EnginePlacement:
    """The placement of a vLLM engine with ``tp`` GPUs, using ``share`` of each; ``bundle_indices``:
    its devices' bundles in its node's placement group (default ``0..tp-1``)."""
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if not 0 < share <= 1:
        raise ValueError(f"memory share must be in (0, 1], got {share}")
    if tp == 1:
        return EnginePlacement(tp=1, share=share, engine_kwargs={"tensor_parallel_size": 1,
                                                                 "distributed_executor_backend": IN_PROCESS_EXECUTOR})
    bundles = list(range(tp)) if bundle_indices is None else [int(b) for b in bundle_indices]
    if len(bundles) != tp or len(set(bundles)) != tp:
        raise ValueError(f"a tp={tp} engine needs {tp} distinct bundles, got {bundles}")
    return EnginePlacement(
        tp=tp, share=share, engine_kwargs={"tensor_parallel_size": tp, "distributed_executor_backend": RAY_EXECUTOR},
        engine_env={"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, bundles)),
                    "VLLM_RAY_PER_WORKER_GPUS": repr(float(share))},
        unset_env=("CUDA_VISIBLE_DEVICES",))


def apply_engine_env(placement: EnginePlacement, environ: MutableMapping[str, str]) -> None:
    """Set ``placement``'s environment in ``environ`` (``os.environ`` in the actor, before the engine starts)."""
    for key in placement.unset_env:
        environ.pop(key, None)
    environ.update(placement.engine_env)
