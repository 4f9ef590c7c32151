"""A candidate's config: the tree a simulation runs, and the validated config.

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
from typing import Any

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
