"""Where every actor of a layout runs on a cluster: node, devices, GPU fraction, memory share (pure Python).

Nodes. Layout device ``d`` lives on node ``d // cluster.devices_per_node`` (node 0 when unset).
Node ``k`` is the ``k``-th alive Ray node that has the device type's resource, the head node
first, then by address and node id (``order_nodes``): on one machine that is the only node; on a
cluster, list the head's devices first.

Actors. One per rollout or teacher worker (named and given devices as ``config/placement.py``
does for the simulator) and one per learner rank: ``learner-0`` is rank 0, ``learner-0.rank<r>``
rank ``r``, each on one of the learner's devices. A worker's devices must be on one node (a
tensor-parallel group talks every layer); the learner's ranks may span nodes.

GPUs (``cluster.device_type: cuda``). The devices a layout uses on a node are the bundles of one
placement group on that node (``{"GPU": 1}`` each, ``STRICT_PACK``, pinned to the node by its
``ray.io/node-id`` label). An actor on device ``d`` is scheduled into ``d``'s bundle and asks for
``num_gpus`` = its memory share (``config/memory_shares.py``; shares on a device add up to at
most 1), so actors that share a layout device share one physical GPU and actors of different
devices never do. Ray makes the bundle's GPU visible to the actor (``CUDA_VISIBLE_DEVICES``): its
torch device is the position of its GPU among the visible ones (``visible_device``; ``cuda:0``),
never the layout's index. A vLLM worker with ``tp > 1`` drives its engine from an actor without a
GPU in its first device's bundle; the engine's Ray workers take its devices' bundles
(``VLLM_RAY_BUNDLE_INDICES``, ``backends/vllm_backend/placement.py``). A worker on several GPUs
without tensor parallelism (more workers than devices) has no meaning on GPUs and is refused.

CPU cores (``device_type: cpu``). An actor goes to its node with hard node affinity and pins
itself to its cores there (``local``: ``d mod devices_per_node``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from asyncopd.config.memory_shares import worker_shares
from asyncopd.config.placement import placement

HEAD_RESOURCE = "node:__internal_head__"
NODE_ID_LABEL = "ray.io/node-id"


@dataclass(frozen=True)
class ActorPlace:
    name: str  # rollout-i, teacher-i, learner-0, learner-0.rank<r>
    role: str
    index: int  # i of a worker, r of a learner rank
    devices: tuple[int, ...]  # layout (cluster-wide) indices
    node: int
    local: tuple[int, ...]  # indices on its node (CPU cores to pin)
    bundles: tuple[int, ...]  # positions of its devices in its node's placement group (GPUs)
    share: float | None  # of each of its devices' memory (GPUs)
    num_gpus: float  # what the actor itself asks Ray for
    engine_tp: int = 1  # > 1: a vLLM engine whose Ray workers take ``bundles``


def node_of(cfg: Any, device: int) -> int:
    per = cfg.cluster.devices_per_node
    return int(device) // per if per else 0


def learner_rank_name(rank: int) -> str:
    return "learner-0" if rank == 0 else f"learner-0.rank{rank}"


def node_devices(cfg: Any) -> dict[int, list[int]]:
    """Node -> the layout devices used there, in bundle order."""
    used = sorted({int(d) for devs in placement(cfg.layout).values() for d in devs})
    out: dict[int, list[int]] = {}
    for d in used:
        out.setdefault(node_of(cfg, d), []).append(d)
    return out


def plan_actors(cfg: Any) -> list[ActorPlace]:
    """Every actor's place (module docstring); raises ``ValueError`` naming the layout field
    when a worker's devices span nodes or a GPU worker spans devices without tensor parallelism."""
    cuda = cfg.cluster.device_type == "cuda"
    per = cfg.cluster.devices_per_node
    shares = worker_shares(cfg) if cuda else {}
    bundle = {d: i for devs in node_devices(cfg).values() for i, d in enumerate(devs)}
    where = placement(cfg.layout)
    out: list[ActorPlace] = []

    def add(name: str, role: str, index: int, devices: tuple[int, ...], share_of: str, tp: int) -> None:
        nodes = sorted({node_of(cfg, d) for d in devices})
        if len(nodes) > 1:
            raise ValueError(f"layout.{role}.devices: {name} runs on devices {list(devices)}, which are on nodes "
                             f"{nodes} (cluster.devices_per_node={per}); a worker's devices must be on one node")
        if cuda and len(devices) > tp:
            raise ValueError(f"layout.{role}: {name} would share devices {list(devices)} at tp={tp}; on GPUs each "
                             f"worker needs its own devices (workers * tp <= number of devices), or tp={len(devices)}")
        share = shares.get(share_of) if cuda else None
        vllm = getattr(getattr(cfg, role), "backend", "torch") == "vllm"  # (the learner has no backend field)
        engine_tp = tp if cuda and tp > 1 and vllm else 1
        gpus = 0.0 if not cuda or engine_tp > 1 else float(share or 0.0)
        out.append(ActorPlace(name, role, index, devices, nodes[0], tuple(d % per if per else d for d in devices),
                              tuple(bundle[d] for d in devices), share, gpus, engine_tp))

    for role in ("rollout", "teacher"):
        lay = getattr(cfg.layout, role)
        for i in range(lay.workers):
            name = f"{role}-{i}"
            add(name, role, i, tuple(int(d) for d in where[name]), name, lay.tp)
    for r, d in enumerate(cfg.layout.learner.devices):
        add(learner_rank_name(r), "learner", r, (int(d),), "learner-0", 1)
    return out


# ----------------------------------------------------------------------------- the cluster Ray reports


def order_nodes(nodes: Sequence[Mapping[str, Any]], resource: str) -> list[Mapping[str, Any]]:
    """Alive nodes (``ray.nodes()`` entries) with ``resource``: the head first, then by address and id."""
    alive = [n for n in nodes if n.get("Alive", True) and n.get("Resources", {}).get(resource, 0) > 0]
    return sorted(alive, key=lambda n: (HEAD_RESOURCE not in n.get("Resources", {}),
                                        str(n.get("NodeManagerAddress", "")), str(n.get("NodeID", ""))))


def check_cluster(cfg: Any, nodes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Ray nodes the layout's node indices stand for; raises ``ValueError`` (one line naming the
    field) when the cluster has too few nodes, or a node too few GPUs or cores for its devices."""
    cuda = cfg.cluster.device_type == "cuda"
    resource = "GPU" if cuda else "CPU"
    ordered = order_nodes(nodes, resource)
    need = node_devices(cfg)
    if len(ordered) <= max(need):
        raise ValueError(f"cluster.devices_per_node={cfg.cluster.devices_per_node}: the layout uses node(s) "
                         f"{sorted(need)}, but Ray reports {len(ordered)} node(s) with {resource}")
    for k, devices in sorted(need.items()):
        have = ordered[k].get("Resources", {}).get(resource, 0)
        local = [d % cfg.cluster.devices_per_node if cfg.cluster.devices_per_node else d for d in devices]
        needed = len(devices) if cuda else max(local) + 1
        if have < needed:
            what = "GPUs" if cuda else "CPU cores"
            raise ValueError(f"layout: node {k} ({ordered[k].get('NodeManagerAddress', '?')}) has {have:g} {what}, "
                             f"the layout puts devices {devices} there (needs {needed})")
    return ordered


def node_bundles(cfg: Any) -> dict[int, list[dict[str, float]]]:
    """Node -> the bundles of its placement group (GPUs only: one ``{"GPU": 1}`` per used device)."""
    return {k: [{"GPU": 1.0} for _ in devs] for k, devs in node_devices(cfg).items()}


def visible_device(gpu_ids: Sequence[Any], cuda_visible: str | None, local: int) -> int:
    """The torch CUDA index of an actor's first GPU: its position among the visible devices
    (Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's GPUs, so usually 0). Without GPUs from Ray
    (``gpu_ids`` empty: Ray manages no GPUs) the process sees its node's devices and uses ``local``,
    its first device's index on the node."""
    if not gpu_ids:
        return int(local)
    visible = [v.strip() for v in (cuda_visible or "").split(",") if v.strip()]
    first = str(gpu_ids[0])
    return visible.index(first) if first in visible else 0
