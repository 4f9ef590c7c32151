"""The cluster planner: choose layout, policy and staleness bound before the run (``asyncopd plan``).

``space`` enumerates layouts and policies, ``memory`` rejects what does not fit, ``bounds``
gives each layout an optimistic throughput, ``search`` simulates candidates in parallel with
successive halving, ``candidates`` builds their configs, ``report`` and ``write`` produce the
table, CSVs, plot and the chosen config; ``core.plan_cluster`` ties them together. No torch or
ray here. The names below load on first use, so that registering the ``plan`` command
(``planner/cli.py``) does not load the simulator.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PlanOptions", "PlanResult", "plan_cluster", "planner_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # (lazy: the simulator, simpy and numpy load only when a plan is made)
        return getattr(importlib.import_module("asyncopd.planner.core"), name)
    raise AttributeError(f"module 'asyncopd.planner' has no attribute {name!r}")
