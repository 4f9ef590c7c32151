"""Ray's side of ``asyncopd/config/actor_placement.py``: the cluster's nodes, one placement group
per node for GPU layouts, and the options that put each actor where its place says.

Placement groups are reserved before any actor starts and waited for up to a timeout, so a
layout the cluster cannot hold fails at once, naming the node, instead of leaving actors pending.
They are released when the run ends (``release``); a crashed driver's groups go with its job.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from asyncopd.config.actor_placement import NODE_ID_LABEL, ActorPlace, check_cluster, node_bundles


def cluster_nodes(cfg: Any) -> list[Mapping[str, Any]]:
    """The Ray nodes the layout's node indices stand for (``check_cluster`` on ``ray.nodes()``)."""
    import ray

    return check_cluster(cfg, ray.nodes())


def reserve(cfg: Any, nodes: Sequence[Mapping[str, Any]], timeout_s: float = 120.0) -> dict[int, Any]:
    """GPU layouts: node index -> a ``STRICT_PACK`` placement group of that node's used devices,
    pinned to the node by its id label, ready. CPU layouts: none (actors use node affinity)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if cfg.cluster.device_type != "cuda":
        return {}
    groups: dict[int, Any] = {}
    for k, bundles in sorted(node_bundles(cfg).items()):
        node_id = nodes[k]["NodeID"]
        groups[k] = placement_group(bundles, strategy="STRICT_PACK", name=f"asyncopd-{cfg.run.name}-node{k}",
                                    bundle_label_selector=[{NODE_ID_LABEL: node_id}] * len(bundles))
    ready, pending = ray.wait([g.ready() for g in groups.values()], num_returns=len(groups), timeout=timeout_s)
    if pending:
        late = [k for k, g in groups.items() if g.ready() not in ready]
        for g in groups.values():
            remove_placement_group(g)
        raise RuntimeError(f"Ray could not reserve the layout's GPUs on node(s) {late} within {timeout_s:g} s "
                           "(another job holds them?): see `ray status`")
    return groups


def actor_options(place: ActorPlace, groups: Mapping[int, Any], nodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Ray options that put the actor of ``place`` on its node and devices."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    if place.node in groups:
        strategy: Any = PlacementGroupSchedulingStrategy(
            placement_group=groups[place.node], placement_group_bundle_index=place.bundles[0],
            placement_group_capture_child_tasks=place.engine_tp > 1)  # (a vLLM engine's workers join the group)
    else:
        strategy = NodeAffinitySchedulingStrategy(node_id=nodes[place.node]["NodeID"], soft=False)
    return {"num_cpus": 0, "num_gpus": place.num_gpus, "scheduling_strategy": strategy}


def release(groups: Mapping[int, Any]) -> None:
    from ray.util.placement_group import remove_placement_group

    for g in groups.values():
        remove_placement_group(g)
