"""The search space: device layouts of the three roles, and scheduling policies.

A layout puts the ``N`` devices ``0 .. N-1`` into contiguous *groups*, one per part of a
*colocation* (a set partition of {rollout, teacher, learner}; roles in one group share its
devices and time-slice them, as ``sim.devices`` models):

    none             [rollout] [teacher] [learner]
    teacher+learner  [rollout] [teacher + learner]
    rollout+learner  [rollout + learner] [teacher]
    rollout+teacher  [rollout + teacher] [learner]
    all              [rollout + teacher + learner]

Group sizes are the compositions of ``N`` into as many positive parts, in multiples of a
device ``unit`` (1 up to 31 devices; for larger clusters the largest power of two
``<= N // 16`` that divides ``N``, so a 64-GPU cluster is split in steps of 4). Inside a
group of ``d`` devices every role picks a tensor-parallel degree ``tp`` (a power of two
``<= min(d, devices_per_node)`` dividing ``d`` and the model's attention heads); rollout and
teacher run one worker per ``tp`` devices (``d / tp`` workers; a wave-batching rollout whose group is
a single ``tp`` group may also run two workers on it, interleaving waves -- both then hold
exactly those devices, see ``asyncopd.config.placement``), the single learner spans the whole
group as one data-parallel rank per device (``learner.strategy`` ddp or fsdp: the trainer's
learner has no tensor parallelism, so the planner does not propose it; ``learner_tp_values``).
Layouts whose tensor-parallel groups would straddle a node boundary are skipped.

Every layout uses all ``N`` devices, each device belongs to exactly one group, and a device is
shared only by the roles of its group: ``tests/test_planner.py`` checks this with hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from asyncopd.control.policies import parse_policy
from sim.cost_model import LayoutShape

ROLES = ("rollout", "teacher", "learner")

PARTITIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "none": (("rollout",), ("teacher",), ("learner",)),
    "teacher+learner": (("rollout",), ("teacher", "learner")),
    "rollout+learner": (("rollout", "learner"), ("teacher",)),
    "rollout+teacher": (("rollout", "teacher"), ("learner",)),
    "all": (("rollout", "teacher", "learner"),),
}


@dataclass(frozen=True)
class RolePlan:
    first: int  # first device of the role's group
    size: int  # devices in the group
    tp: int
    workers: int

    @property
    def devices(self) -> list[int]:
        return list(range(self.first, self.first + self.size))

    @property
    def per_device(self) -> int:
        """Workers of this role holding a slice of each of its devices (learner: 1)."""
        return max(1, self.workers * self.tp // self.size)


@dataclass(frozen=True)
class Layout:
    colocation: str
    rollout: RolePlan
    teacher: RolePlan
    learner: RolePlan
    num_devices: int

    def role(self, name: str) -> RolePlan:
        return getattr(self, name)

    def groups(self) -> list[tuple[RolePlan, tuple[str, ...]]]:
        """(group extent, roles in it), in device order."""
        out: dict[tuple[int, int], list[str]] = {}
        for r in ROLES:
            p = self.role(r)
            out.setdefault((p.first, p.size), []).append(r)
        return [(RolePlan(first, size, 1, 1), tuple(rs)) for (first, size), rs in sorted(out.items())]

    def shape(self) -> LayoutShape:
        """What the cost model needs of this layout (``CostModel.for_layout``)."""
        return LayoutShape(rollout_tp=self.rollout.tp, teacher_tp=self.teacher.tp, learner_devices=self.learner.size,
                           learner_tp=self.learner.tp, total_devices=self.num_devices)

    @property
    def devices_used(self) -> int:
        return sum(g.size for g, _ in self.groups())

    def section(self) -> dict:
        """The config's ``layout`` section."""
        return {r: {"workers": self.role(r).workers, "devices": self.role(r).devices, "tp": self.role(r).tp}
                for r in ROLES}

    def describe(self) -> str:
        parts = []
        for g, roles in self.groups():
            span = f"[{g.first}]" if g.size == 1 else f"[{g.first}-{g.first + g.size - 1}]"
            names = []
            for r in roles:
                p = self.role(r)
                names.append(f"L tp{p.tp}" if r == "learner" else f"{r[0].upper()}{p.workers}xtp{p.tp}")
            parts.append(f"{span} {' + '.join(names)}")
        return " | ".join(parts)


@dataclass(frozen=True)
class SpaceOptions:
    num_devices: int
    devices_per_node: int = 8
    student_heads: int = 1
    teacher_heads: int = 1
    tp_values: tuple[int, ...] = (1, 2, 4, 8)
    learner_tp_values: tuple[int, ...] = (1,)  # data parallelism only, as the trainer runs it
    rollout_oversubscription: tuple[int, ...] = (1,)
    colocations: tuple[str, ...] = tuple(PARTITIONS)
    unit: int = 0  # 0: the default rule (module docstring)

    def device_unit(self) -> int:
        if self.unit:
            return self.unit
        n = self.num_devices
        u = 1
        while n >= 32 and u * 2 <= n // 16 and n % (u * 2) == 0:
            u *= 2
        return u


@dataclass
class LayoutSpace:
    layouts: list[Layout] = field(default_factory=list)
    skipped_node_crossing: int = 0


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Ordered ways to write ``total`` as ``parts`` positive integers."""
    if parts == 1:
        if total >= 1:
            yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def _tp_options(size: int, heads: int, opts: SpaceOptions) -> list[int]:
    return [t for t in opts.tp_values
            if t <= min(size, opts.devices_per_node) and size % t == 0 and heads % t == 0]


def _crosses_node(first: int, size: int, tp: int, per_node: int) -> bool:
    return any((a // per_node) != ((a + tp - 1) // per_node) for a in range(first, first + size, tp))


def enumerate_layouts(opts: SpaceOptions) -> LayoutSpace:
    """Every layout of the space (module docstring), with the count of node-crossing ones skipped."""
    n, unit = opts.num_devices, opts.device_unit()
    space = LayoutSpace()
    heads = {"rollout": opts.student_heads, "teacher": opts.teacher_heads, "learner": opts.student_heads}
    for colo in opts.colocations:
        groups = PARTITIONS[colo]
        for sizes_u in compositions(n // unit, len(groups)):
            sizes = [s * unit for s in sizes_u]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            where = {r: (starts[i], sizes[i]) for i, g in enumerate(groups) for r in g}
            choices: dict[str, list[tuple[int, int]]] = {}
            for r in ROLES:
                first, size = where[r]
                tps = _tp_options(size, heads[r], opts)
                if r == "learner":
                    choices[r] = [(t, 1) for t in tps if t in opts.learner_tp_values]
                elif r == "rollout":
                    choices[r] = [(t, size // t * k) for t in tps for k in opts.rollout_oversubscription
                                  if k == 1 or t == size]
                else:
                    choices[r] = [(t, size // t) for t in tps]
            for rt, rw in choices["rollout"]:
                for tt, tw in choices["teacher"]:
                    for lt, _ in choices["learner"]:
                        plans = {r: RolePlan(where[r][0], where[r][1], t, w)
                                 for r, (t, w) in (("rollout", (rt, rw)), ("teacher", (tt, tw)), ("learner", (lt, 1)))}
                        if n > opts.devices_per_node and any(
                                _crosses_node(p.first, p.size, p.tp, opts.devices_per_node) for p in plans.values()):
                            space.skipped_node_crossing += 1
                            continue
                        space.layouts.append(Layout(colo, plans["rollout"], plans["teacher"], plans["learner"], n))
    return space


DEFAULT_POLICIES = (
    "sync", "step_off(1)", "step_off(2)",
    "fully_async(eta=1)", "fully_async(eta=2)", "fully_async(eta=4)", "fully_async(eta=8)",
    "fully_async(eta=2, max_staleness=2)", "fully_async(eta=4, max_staleness=4)",
)


def policy_grid(max_staleness: int | None = None, policies: list[str] | None = None) -> list[str]:
    """Canonical policy strings to try. ``sync`` is always among them (the baseline). With a
    per-sample cap ``max_staleness = c``, policies whose hard bound exceeds ``c`` (or that have
    none) are dropped, and ``fully_async(eta=e, max_staleness=c, on_exceed=evict)`` for
    ``e in {1, 2, 4} <= c`` added (from the default grid only). Raises ValueError on a bad string."""
    texts = list(policies) if policies else list(DEFAULT_POLICIES)
    out: list[str] = []
    for t in ["sync", *texts]:
        p = parse_policy(t)
        bound = p.staleness_bound
        if max_staleness is not None and (bound is None or bound > max_staleness):
            continue
        if p.describe() not in out:
            out.append(p.describe())
    if max_staleness is not None and max_staleness >= 1 and not policies:
        for e in (1, 2, 4):
            if e <= max_staleness:
                d = parse_policy(f"fully_async(eta={e}, max_staleness={max_staleness})").describe()
                if d not in out:
                    out.append(d)
    return out


def policy_kind(policy: str) -> str:
    return parse_policy(policy).kind
