"""``asyncopd train CONFIG --dry-run``: check a layout against the cluster Ray reports and show
where every actor would run, without loading a model.

It does what a run does up to the models: checks the layout (``setup.check_layout_runnable``),
maps the layout's nodes onto Ray's (``config/actor_placement.check_cluster``), reserves the
placement groups (GPU layouts), and starts one small probe actor per actor of the run with the
exact options the run would give it. Each probe answers from where Ray put it: node, the GPUs
Ray gave it, ``CUDA_VISIBLE_DEVICES``, and the torch device the run's actor would use there.
Then everything is released. A user with 8 GPUs checks a plan before spending GPU time.
"""

from __future__ import annotations

import os
from typing import Any

from asyncopd.config.actor_placement import plan_actors, visible_device
from asyncopd.config.schema import OPDConfig
from asyncopd.runtime.placement_groups import actor_options, cluster_nodes, release, reserve
from asyncopd.runtime.setup import check_layout_runnable, missing_for_training, start_ray


class PlacementProbe:
    """Stands where an actor of the run would stand, and says what it sees there."""

    def __init__(self, device_type: str, devices: list[int]) -> None:
        self.device_type, self.devices = device_type, devices

    def where(self) -> dict[str, Any]:
        from asyncopd.runtime.actors import ray_gpu_ids, where_am_i  # (lazy: only inside the probe's process)

        info = where_am_i()
        if self.device_type == "cuda":
            info["device"] = f"cuda:{visible_device(ray_gpu_ids(), os.environ.get('CUDA_VISIBLE_DEVICES'), self.devices[0])}"
        else:
            info["device"] = "cpu cores " + ",".join(map(str, self.devices))
        return info


def dry_run(cfg: OPDConfig, timeout_s: float = 120.0) -> dict[str, Any]:
    """Returns ``{"rows": [...], "notes": [...], "nodes": [...]}``: one row per actor (name, node,
    layout devices, local devices, GPUs, CUDA_VISIBLE_DEVICES, device, memory share, num_gpus)."""
    import ray

    check_layout_runnable(cfg)
    places = plan_actors(cfg)
    started = start_ray(cfg)
    groups: dict[int, Any] = {}
    probes: list[Any] = []
    try:
        nodes = cluster_nodes(cfg)
        groups = reserve(cfg, nodes, timeout_s)
        Probe = ray.remote(PlacementProbe)
        probes = [Probe.options(**actor_options(p, groups, nodes)).remote(cfg.cluster.device_type, list(p.local))
                  for p in places]
        ready, pending = ray.wait([h.where.remote() for h in probes], num_returns=len(probes), timeout=timeout_s)
        if pending:
            raise RuntimeError(f"{len(pending)} of {len(probes)} actors could not be placed within {timeout_s:g} s "
                               "(see `ray status`)")
        answers = ray.get([h.where.remote() for h in probes])
        for p, a in zip(places, answers):
            if p.engine_tp > 1:  # where the engine's Ray workers would get their GPUs
                a["gpus"] = _engine_gpus(p, groups[p.node])
                a["device"] = f"engine: {p.engine_tp} ranks, cuda:0 each"
        index = {n["NodeID"]: k for k, n in enumerate(nodes)}
        rows = [{"actor": p.name, "node": p.node, "ray_node": index.get(a["node"]), "ip": a["ip"],
                 "layout_devices": list(p.devices), "local_devices": list(p.local), "ray_gpus": a["gpus"],
                 "cuda_visible": a["cuda_visible"], "device": a["device"], "memory_share": p.share,
                 "num_gpus": p.num_gpus, "engine_tp": p.engine_tp} for p, a in zip(places, answers)]
        wrong = [r["actor"] for r in rows if r["ray_node"] != r["node"]]
        if wrong:
            raise RuntimeError(f"Ray placed {', '.join(wrong)} on another node than the layout says")
        return {"rows": rows, "notes": missing_for_training(cfg),
                "nodes": [{"index": k, "ip": n.get("NodeManagerAddress"), "id": n["NodeID"][:12],
                           "gpus": n.get("Resources", {}).get("GPU", 0), "cpus": n.get("Resources", {}).get("CPU", 0)}
                          for k, n in enumerate(nodes)]}
    finally:
        for h in probes:
            ray.kill(h)
        release(groups)
        if started:
            ray.shutdown()


def _engine_gpus(place: Any, group: Any) -> list[str]:
    """The GPU a task gets in each of a vLLM engine's bundles, asking what each of its ranks asks."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote
    def gpu_ids() -> list[str]:
        return [str(g) for g in ray.get_gpu_ids()]

    refs = [gpu_ids.options(num_cpus=0, num_gpus=place.share, scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=b)).remote() for b in place.bundles]
    return [g for ids in ray.get(refs) for g in ids]


def placement_table(name: str, report: dict[str, Any]) -> Any:
    """``dry_run``'s report as a rich table, one row per actor."""
    from rich.table import Table

    nodes = ", ".join(f"node {n['index']}: {n['ip']} ({n['gpus']:g} GPUs, {n['cpus']:g} CPUs)" for n in report["nodes"])
    table = Table(title=f"placement of {name} on the Ray cluster ({nodes})")
    for col in ("actor", "node", "layout devices", "Ray GPUs", "CUDA_VISIBLE_DEVICES", "device in actor",
                "memory share", "num_gpus"):
        table.add_column(col, no_wrap=col == "actor")
    for r in report["rows"]:
        share = "-" if r["memory_share"] is None else f"{r['memory_share']:.3g}"
        gpus = f"{r['num_gpus']:g}" + (f" (engine: {r['engine_tp']} ranks)" if r["engine_tp"] > 1 else "")
        table.add_row(r["actor"], str(r["node"]), ",".join(map(str, r["layout_devices"])),
                      ",".join(r["ray_gpus"]) or "-", r["cuda_visible"] if r["cuda_visible"] is not None else "-",
                      r["device"], share, gpus)
    return table
