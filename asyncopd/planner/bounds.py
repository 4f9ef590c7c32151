"""Optimistic throughput of a layout from the cost model alone (no simulation).

Per role, the samples per second it could sustain on its own devices if it never waited
(``c`` the layout's cost model, ``B`` the batch, ``S`` the mean sequence, ``L`` the mean
response, ``P`` the mean prompt):

    rollout  R = groups * n / (L * t_step(n) + c.prefill(n P)) ,  then  B / (B / R + pause)
             (``n`` sequences per device group: the KV-capped slots times the workers sharing
             it; ``t_step(n)`` one decode step with the batch half-way through: KV ``n (P + L/2)``;
             every learner update pauses rollout for the weight sync)
    teacher  T = workers * m / c.teacher(m S, m)          (m = teacher.max_batch_samples)
    learner  G = B / c.learner(B S, B)

Roles that share a device group share its time: a role runs at ``1 / (1 + sum phi(role, o))``
of its speed over the other busy roles ``o`` (``phi`` per pair of roles,
``asyncopd/config/colocation.py``, as ``sim.devices`` charges), so the group gets through at most
``g`` seconds of uncontended work per second, ``g`` the best over the subsets of its roles that
run at once of ``sum_i 1 / s_i`` (1 when every ``phi >= 1``; ``Sharing.best_gain``), and
sustains ``g / sum(1 / rate)`` over its roles. A pipelined policy (``step_off``, ``fully_async``) can do no better than the
slowest group; its busiest role is the layout's *bottleneck*. ``sync`` runs the stages in
sequence, and a batch's generation lasts at least as long as its longest response::

    sync:  B / (max(B / R, L_max * t_step(1) + c.prefill(P)) + B / T + B / G + pause + 3 * dispatch)

(``L_max`` the expected longest of ``B`` responses). Both are optimistic: waves, stragglers,
queueing and staleness caps only lower the simulated throughput. The planner ranks layouts by
these numbers when the space is larger than ``--budget-layouts``, and reports the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncopd.config.colocation import Sharing
from asyncopd.planner.space import Layout
from asyncopd.planner.workload import Workload
from sim.cost_model import CostModel, segment_time


@dataclass(frozen=True)
class Bound:
    pipelined: float  # samples/s, step_off / fully_async
    sync: float  # samples/s, sync
    bottleneck: str  # the role limiting the pipelined bound ("(shared)": its group has other roles)
    rates: dict[str, float]  # per-role samples/s on their own


def _step(costs: CostModel, n: int, kv: float) -> float:
    return segment_time(costs.decode_segment(n, int(kv)), 1)


def layout_bound(layout: Layout, w: Workload, costs: CostModel, slots: int, sharing: Sharing | float = 1.0) -> Bound:
    """The bounds of ``layout``; ``costs`` is the cost model for it (``CostModel.for_layout``)."""
    B, P, L = w.batch_size, w.prompt_tokens, max(1.0, w.response_mean)
    S = P + L
    ro = layout.rollout
    groups = max(1, ro.size // ro.tp)
    n = max(1, slots) * max(1, ro.workers // groups)
    per_group = n / (L * _step(costs, n, n * (P + L / 2)) + costs.prefill(int(n * P)))
    pause = costs.sync().pause_s
    r_free = groups * per_group
    m = max(1, min(w.teacher_batch, B))
    rates = {
        "rollout": B / (B / r_free + pause),
        "teacher": layout.teacher.workers * m / costs.teacher(int(m * S), m),
        "learner": B / costs.learner(int(B * S), B),
    }
    pipelined, bottleneck = float("inf"), ""
    for _, roles in layout.groups():
        rate = Sharing.coerce(sharing).best_gain(list(roles)) / sum(1.0 / rates[r] for r in roles)
        if rate < pipelined:
            busiest = min(roles, key=lambda r: rates[r])
            pipelined, bottleneck = rate, busiest + (" (shared)" if len(roles) > 1 else "")
    gen = max(B / r_free, max(1.0, w.response_batch_max) * _step(costs, 1, P) + costs.prefill(int(P)))
    step = gen + B / rates["teacher"] + B / rates["learner"] + pause + 3 * costs.dispatch()
    return Bound(pipelined=pipelined, sync=B / step, bottleneck=bottleneck, rates=rates)
