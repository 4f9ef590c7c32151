"""Configs of candidates: the tree a simulation runs, and the chosen layout written as YAML.

A candidate changes four things of the planner's base config: ``layout`` (all three roles),
``pipeline.policy``, ``rollout.gpu_memory_utilization`` (the share of each device a rollout
worker may take once colocated roles are served: see ``memory.check_memory``) and, for the
simulations only, ``run.total_steps`` (and no ``run.time_budget_s``). Everything goes
through ``OPDConfig.model_validate``, so a written config is exactly what
``asyncopd check`` / ``simulate`` / ``train`` accept.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from asyncopd.config.schema import OPDConfig


def candidate_tree(base: dict[str, Any], layout: dict[str, Any], policy: str, rollout_share: float | None,
                   steps: int | None = None) -> dict[str, Any]:
    """``base`` (a ``model_dump(mode="json")`` tree) with the candidate's fields replaced."""
    tree = copy.deepcopy(base)
    tree["layout"] = copy.deepcopy(layout)
    tree["pipeline"]["policy"] = policy
    if rollout_share is not None and rollout_share > 0:
        tree["rollout"]["gpu_memory_utilization"] = max(1e-3, math.floor(rollout_share * 1000) / 1000)
    if steps is not None:
        tree["run"]["total_steps"] = steps
        tree["run"]["time_budget_s"] = None
    return tree


def candidate_config(base: OPDConfig, layout: dict[str, Any], policy: str, rollout_share: float | None,
                     steps: int | None = None) -> OPDConfig:
    return OPDConfig.model_validate(candidate_tree(base.model_dump(mode="json"), layout, policy, rollout_share,
                                                   steps))


def write_config(cfg: OPDConfig, path: str | Path, header: list[str] = ()) -> Path:
    """Write ``cfg`` as YAML (``header`` lines become comments on top); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    path.write_text(text)
    return path


def save_plan(res, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write a plan's outputs into ``out_dir``: ``plan.csv``, ``rejected.csv``, ``plan.json``,
    ``plan.yaml`` (the chosen layout, when one met the constraints) and ``pareto.png``."""
    import json

    from asyncopd.planner import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = report.rows(res)
    paths = {"csv": report.write_csv(table, out / "plan.csv"),
             "rejected": report.write_csv(report.rejected_rows(res), out / "rejected.csv",
                                          None if res.rejected else ["layout", "reason"])}
    best = res.best
    if best is not None:
        sp = res.speedup(best)
        r = best.result or {}
        header = [f"written by `asyncopd plan` ({res.base.cluster.num_devices} x {res.base.cluster.hardware}): "
                  f"{best.layout.describe()}, {best.policy}",
                  f"predicted {r.get('tokens_per_s', 0):,.0f} tokens/s ({r.get('samples_per_s', 0):.4g} samples/s)"
                  + (f", {sp:.2f}x the best sync layout" if sp else "")
                  + f", mean staleness {r.get('staleness_mean', 0):.2f} (simulated {best.steps} learner steps)"]
        trial = res.verified.get(best.key)
        if trial is not None:
            header.append(f"measured on the planning machine: {trial.tokens_per_s:,.0f} tokens/s "
                          f"({trial.samples_per_s:.4g} samples/s), mean of {len(trial.runs)} runs "
                          f"(asyncopd plan --verify)")
        paths["config"] = write_config(res.chosen_config(best), out / "plan.yaml", header)
    summary = res.summary()
    summary["outputs"] = {k: str(v) for k, v in paths.items()}
    if plots and any(row["rank"] is not None for row in table):
        paths["pareto"] = report.pareto_plot(table, out / "pareto.png",
                                             title=f"{res.base.run.name}: {res.base.cluster.num_devices} x "
                                                   f"{res.base.cluster.hardware}")
        summary["outputs"]["pareto"] = str(paths["pareto"])
    (out / "plan.json").write_text(json.dumps(summary, indent=2, default=str))
    paths["json"] = out / "plan.json"
    return paths
