"""Where a vLLM worker runs: one GPU, or ``tp`` GPUs through a Ray placement group.

Written against vLLM's Ray executor as read in its source (``vllm/v1/executor/ray_executor.py``,
``ray_utils.py``, ``vllm/config/parallel.py``, ``vllm/engine/arg_utils.py``); never run on a GPU here.

tp = 1
    The Ray actor itself takes the worker's share of one GPU (``num_gpus=share``, Ray makes that
    GPU visible) and the engine runs in the actor's process (``distributed_executor_backend="uni"``).

tp > 1
    vLLM starts one Ray worker process per tensor-parallel rank. Each needs its own GPU, and the
    ranks exchange activations every layer, so they belong on one node: a placement group of
    ``tp`` bundles ``{"GPU": share}`` with strategy ``STRICT_PACK``. The actor that drives the
    engine holds no GPU (``num_gpus=0``: the ranks hold them) and is scheduled into the group
    with ``placement_group_capture_child_tasks=True``; vLLM's engine arguments, seeing
    ``distributed_executor_backend="ray"``, take ``ray.util.get_current_placement_group()`` and
    place rank ``i`` on bundle ``VLLM_RAY_BUNDLE_INDICES[i]`` with ``VLLM_RAY_PER_WORKER_GPUS``
    GPUs (default 1; here the share, so a fractional bundle is not over-asked). vLLM refuses a
    bundle with more than one GPU. Ray sets ``CUDA_VISIBLE_DEVICES`` to nothing in a zero-GPU
    actor; the ranks pick their device by local rank, so the actor unsets it before the engine starts.

    Caveat (not tested anywhere): with a share < 1, Ray may take two bundles' fractions from the
    same physical GPU, putting two ranks on one device. Whole-GPU shares (1.0) cannot collide.

Nothing here imports ray at module level: the spec is plain data (tests check it without Ray);
``actor_options`` imports ray when the driver calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, MutableMapping

STRATEGY = "STRICT_PACK"
RAY_EXECUTOR = "ray"
IN_PROCESS_EXECUTOR = "uni"


@dataclass(frozen=True)
class EnginePlacement:
    """What one vLLM worker's actor and engine need (module docstring)."""

    tp: int
    share: float  # of each GPU's memory: gpu_memory_utilization, and the Ray GPU fraction per rank
    bundles: list[dict[str, float]] = field(default_factory=list)  # empty: no placement group
    strategy: str | None = None
    actor_num_gpus: float = 0.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    engine_env: dict[str, str] = field(default_factory=dict)  # set in the actor before the engine starts
    unset_env: tuple[str, ...] = ()  # removed in the actor before the engine starts

    @property
    def uses_placement_group(self) -> bool:
        return bool(self.bundles)


def engine_placement(tp: int, share: float) -> EnginePlacement:
    """The placement of a vLLM worker with ``tp`` GPUs, using ``share`` of each."""
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if not 0 < share <= 1:
        raise ValueError(f"memory share must be in (0, 1], got {share}")
    if tp == 1:
        return EnginePlacement(tp=1, share=share, actor_num_gpus=share,
                               engine_kwargs={"tensor_parallel_size": 1,
                                              "distributed_executor_backend": IN_PROCESS_EXECUTOR})
    return EnginePlacement(
        tp=tp, share=share, bundles=[{"GPU": share} for _ in range(tp)], strategy=STRATEGY, actor_num_gpus=0.0,
        engine_kwargs={"tensor_parallel_size": tp, "distributed_executor_backend": RAY_EXECUTOR},
        engine_env={"VLLM_RAY_BUNDLE_INDICES": ",".join(str(i) for i in range(tp)),
                    "VLLM_RAY_PER_WORKER_GPUS": repr(float(share))},
        unset_env=("CUDA_VISIBLE_DEVICES",))


def apply_engine_env(placement: EnginePlacement, environ: MutableMapping[str, str]) -> None:
    """Set ``placement``'s environment in ``environ`` (``os.environ`` in the actor, before the engine starts)."""
    for key in placement.unset_env:
        environ.pop(key, None)
    environ.update(placement.engine_env)


def actor_options(placement: EnginePlacement, name: str, timeout_s: float = 600.0) -> dict[str, Any]:
    """Ray actor options for the actor that drives the engine: its GPU fraction (tp = 1), or a new
    ``STRICT_PACK`` placement group of ``tp`` bundles it is scheduled into (tp > 1), waited for up
    to ``timeout_s`` so that an unsatisfiable layout fails here, naming the worker."""
    if not placement.uses_placement_group:
        return {"num_gpus": placement.actor_num_gpus}
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group(placement.bundles, strategy=placement.strategy, name=f"asyncopd-{name}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(f"{name}: Ray could not reserve {placement.tp} GPUs ({placement.share:g} each) on one "
                           f"node within {timeout_s:g} s for its tensor-parallel engine (placement group "
                           f"{placement.bundles}, {placement.strategy})")
    return {"num_gpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}
