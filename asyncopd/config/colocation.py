"""How much workers that share a device slow each other down, per pair of roles.

A worker of role ``r`` on a device where other workers are busy runs at ``1 / s`` of its own
speed, with

    s = 1 + sum_{o busy on the device, o != the worker} phi(r, role(o))

``phi(a, b)`` is symmetric unless a *directed* entry ``a|b`` (what a busy ``b`` costs ``a``) is
given: measured on one CPU core (``asyncopd calibrate --contention``), a teacher costs a rollout
worker ``phi = 1.65`` while the rollout costs the teacher 1.10, so one value per pair cannot
be right for both. With one value ``phi`` for every pair this is the familiar
``1 + phi * (k - 1)`` for ``k`` busy workers: ``phi = 1`` is fair time slicing, ``phi < 1``
means the workers leave gaps (Ray calls, Python, data movement) that the others fill,
``phi > 1`` adds switching and cache costs. Pairs differ in practice: on 2 CPU cores a
teacher and a learner sharing a core fitted ``phi ~ 0.95``, a rollout worker and a teacher
0.3-0.55, and two rollout workers decoding on one core gain nothing from each other.

``sim.costs.colocation_factor`` is the value for every pair that ``sim.costs.colocation_pairs``
does not name (a directed entry ``a|b`` wins over the pair's ``a+b``, which wins over the
factor); ``asyncopd calibrate --from-run`` fits the pairs a run shows, ``asyncopd calibrate
--contention`` measures every directed entry. The additive rule held on the triple there: a
rollout worker sharing a core with a teacher and a learner ran 4.01x slower, against
``1 + phi(r|t) + phi(r|l) = 4.09`` (teacher 3.01 vs 3.07, learner 3.24 vs 3.10). Pure Python: the
simulator, the calibration and the planner all read it.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from asyncopd.control.messages import role_of  # noqa: F401  (re-exported: worker name -> role)

ROLES = ("rollout", "teacher", "learner")


def pair_key(a: str, b: str) -> str:
    """The canonical name of a pair of roles: ``teacher+learner``, ``rollout+rollout``, ..."""
    for r in (a, b):
        if r not in ROLES:
            raise ValueError(f"unknown role {r!r} (expected one of {', '.join(ROLES)})")
    x, y = sorted((a, b), key=ROLES.index)
    return f"{x}+{y}"


def parse_pair(key: str) -> str:
    """Validate and canonicalise a pair name written by a user (``learner+teacher`` is fine)."""
    parts = key.split("+")
    if len(parts) != 2:
        raise ValueError(f"{key!r} is not a pair of roles like 'teacher+learner'")
    return pair_key(parts[0].strip(), parts[1].strip())


def parse_entry(key: str) -> str:
    """A ``colocation_pairs`` key: a pair ``a+b`` (canonical order) or a directed ``a|b`` (what
    a busy ``b`` costs ``a``; order kept)."""
    if "|" in key:
        parts = key.split("|")
        if len(parts) != 2:
            raise ValueError(f"{key!r} is not a directed pair of roles like 'rollout|teacher'")
        a, b = parts[0].strip(), parts[1].strip()
        pair_key(a, b)  # validates both roles
        return f"{a}|{b}"
    return parse_pair(key)


def measured_pairs(entries: Iterable[str]) -> set[str]:
    """The pairs ``a+b`` that ``colocation_pairs`` keys fully determine: the pair itself, or both
    of its directed entries."""
    keys = set(entries)
    out = {k for k in keys if "+" in k}
    for k in keys:
        if "|" in k:
            a, b = k.split("|")
            if f"{b}|{a}" in keys:
                out.add(pair_key(a, b))
    return out


def all_pairs() -> list[str]:
    return [pair_key(a, b) for i, a in enumerate(ROLES) for b in ROLES[i:]]


class Sharing:
    """``phi`` per pair of roles, with a default for pairs not named (see the module docstring)."""

    def __init__(self, default: float = 1.0, pairs: Mapping[str, float] | None = None) -> None:
        self.default = float(default)
        entries = {parse_entry(k): float(v) for k, v in (pairs or {}).items()}
        self.pairs = {k: v for k, v in entries.items() if "|" not in k}
        self.directed = {k: v for k, v in entries.items() if "|" in k}
        self._phi = {(a, b): self.directed.get(f"{a}|{b}", self.pairs.get(pair_key(a, b), self.default))
                     for a in ROLES for b in ROLES}
        self.row = {a: tuple(self._phi[(a, b)] for b in ROLES) for a in ROLES}  # phi(a, .) in ROLES order

    @classmethod
    def of(cls, costs) -> "Sharing":
        """From a ``SimCosts`` section (or anything with the two fields)."""
        return cls(costs.colocation_factor, getattr(costs, "colocation_pairs", None))

    @classmethod
    def coerce(cls, value: "Sharing | float") -> "Sharing":
        return value if isinstance(value, Sharing) else cls(float(value))

    def phi(self, a: str, b: str) -> float:
        return self._phi[(a, b)]

    def slowdown(self, role: str, others: Iterable[str]) -> float:
        """``1 + sum phi(role, o)`` over the roles of the *other* busy workers on one device."""
        return 1.0 + sum(self._phi[(role, o)] for o in others)

    def gang_slowdown(self, role: str, others_per_device: Iterable[Iterable[str]]) -> float:
        """A worker spread over several devices advances only while all of them run it
        (``sim/devices.py``): the product of the per-device slowdowns."""
        f = 1.0
        for others in others_per_device:
            f *= self.slowdown(role, others)
        return f

    def best_gain(self, roles: list[str]) -> float:
        """Most uncontended work per second that workers of ``roles`` (one entry per worker)
        sharing a device get through together: ``max`` over the subsets that run at once of
        ``sum_i 1 / s_i`` (the planner's optimistic bound; a device holds a handful of workers
        at most, so enumerating the subsets is cheap)."""
        best = 1.0
        for n in range(2, len(roles) + 1):
            for group in _subsets(roles, n):
                best = max(best, sum(1.0 / self.slowdown(r, group[:i] + group[i + 1:]) for i, r in enumerate(group)))
        return best


def shared_pairs(placement: Mapping[str, tuple[int, ...]]) -> set[str]:
    """The pairs of roles whose workers share a device in a placement
    (``asyncopd.config.placement.placement``): the ``phi`` a layout's prediction depends on."""
    on: dict[int, list[str]] = {}
    for worker, devices in placement.items():
        for d in devices:
            on.setdefault(d, []).append(role_of(worker))
    return {pair_key(a, b) for roles in on.values() for i, a in enumerate(roles) for b in roles[i + 1:]}


def _subsets(items: list[str], n: int) -> list[list[str]]:
    if n == 0:
        return [[]]
    if len(items) < n:
        return []
    head, rest = items[0], items[1:]
    return [[head, *s] for s in _subsets(rest, n - 1)] + _subsets(rest, n)
