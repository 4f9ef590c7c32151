"""The cluster planner: choose layout, policy and staleness bound before the run (``asyncopd plan``).

``space`` enumerates layouts and policies, ``memory`` rejects what does not fit, ``bounds``
gives each layout an optimistic throughput, ``search`` simulates candidates in parallel with
successive halving, ``report`` and ``write`` produce the table, CSVs, plot and the chosen
config; ``core.plan_cluster`` ties them together. No torch or ray here.
"""

from asyncopd.planner.core import PlanOptions, PlanResult, plan_cluster, planner_config

__all__ = ["PlanOptions", "PlanResult", "plan_cluster", "planner_config"]
