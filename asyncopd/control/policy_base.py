"""What a scheduling policy is: the interface, its parameters, the registry and the parser.

A policy owns four decisions and nothing else; the controller keeps every piece of state,
handles the events and checks the invariants. Each decision reads the controller through
``SchedulerView``, a read-only view:

- ``admission(view, worker_version)``: may a rollout worker holding ``worker_version``
  start a sample now, and which one (a re-queued prompt, or a fresh one of which batch)?
  It must be monotone in ``worker_version``: a newer version is never refused what an older
  one is granted (the controller relies on it to stop looking after the newest worker).
- ``next_batch(view)``: which ready samples form the next learner update (exactly
  ``batch_size`` of them), or ``None`` to wait;
- ``doomed(view, attempt)`` / ``newly_doomed(view)``: which samples are certain to break the
  policy's per-sample cap (evicted as soon as they surface; in-flight generations aborted),
  and ``exceeds_cap(staleness)`` for samples consumed over a cap that keeps them;
- ``scorable(view, attempt)``: may a generated sample go to the teacher yet.

Parameters are dataclass fields declared with ``param`` (an integer with a minimum, an
optional integer, or a choice of strings), so the string form (``step_off(2)``,
``fully_async(eta=4, max_staleness=6)``), the mapping form (``{kind: step_off, n: 2}``), the
validation and the property tests' random policies all derive from one declaration.
A new policy is one class registered with ``@register_policy``.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Collection, Iterable, Mapping, Optional, Protocol, Sequence

from asyncopd.control.ledger import Attempt
from asyncopd.control.staleness import Staleness

Requeued = tuple[int, Optional[int], int]  # (prompt_id, batch or None, attempt number)


class SchedulerView(Protocol):
    """What a policy may read of the controller's state (nothing here may be written)."""

    batch_size: int
    total_steps: int
    version: int  # the learner's version (updates finished)
    steps_issued: int  # updates started (the next one is update ``steps_issued``)
    fresh_admitted: int  # fresh prompts admitted so far, counting the runs this one resumes

    @property
    def held(self) -> int:
        """Admission permits in use: live attempts plus consumed samples."""

    @property
    def prompts_left(self) -> bool:
        """The data source can still supply a fresh prompt."""

    @property
    def requeued(self) -> Sequence[Requeued]:
        """Prompts waiting for a new attempt after an abort, oldest first."""

    def ready_count(self) -> int:
        """Scored samples waiting for the learner."""

    def ready_in_order(self) -> Iterable[int]:
        """Their sample ids in the order they became ready."""

    def ready_in_batch(self, batch: int) -> Collection[int]:
        """Ready samples of learner batch ``batch``, in the order they became ready."""

    def generated_in_batch(self, batch: int) -> int:
        """Samples of batch ``batch`` generated and waiting for (or at) the teacher, or later."""

    def live_attempts(self) -> list[Attempt]:
        """A snapshot of the attempts not yet in a terminal state, by sample id."""


@dataclass(frozen=True, slots=True)
class Admit:
    """An admission decision: start re-queued prompt ``requeued[index]``, or (``index`` None) a
    fresh prompt belonging to learner batch ``batch`` (None: the policy does not batch)."""

    index: Optional[int]
    batch: Optional[int] = None


@dataclass(frozen=True)
class ParamSpec:
    """How one policy parameter is written and checked."""

    name: str
    default: Any
    minimum: Optional[int] = None  # integers
    optional: bool = False  # may be None (written ``none`` / ``null``)
    choices: Optional[tuple[str, ...]] = None  # a string among these

    def convert(self, value: Any, where: str) -> Any:
        """``value`` (from a policy string or a mapping) as this parameter's type."""
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            value = None
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{where}: {self.name} must be given (it cannot be none)")
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"{where}: {self.name} must be an integer, got {value!r}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{where}: {self.name} must be an integer, got {value!r}")
        return value

    def check(self, value: Any, policy: str) -> None:
        if self.minimum is not None and value is not None and value < self.minimum:
            raise ValueError(f"{policy}: {self.name} must be >= {self.minimum}, got {value}")


def param(default: Any, *, minimum: Optional[int] = None, optional: bool = False,
          choices: Optional[tuple[str, ...]] = None) -> Any:
    """A policy parameter (a dataclass field carrying its ``ParamSpec``)."""
    return field(default=default, metadata={"param": (minimum, optional, choices)})


class Policy:
    """Base of every scheduling policy (subclasses are frozen dataclasses; see the module
    docstring for the contract of each decision). The defaults here are a policy without a
    per-sample cap and without a scoring barrier."""

    name: ClassVar[str] = ""
    batched: ClassVar[bool] = False  # prompts are numbered into learner batches

    def __post_init__(self) -> None:
        for spec in self.params():
            spec.check(getattr(self, spec.name), self.name)

    @classmethod
    def params(cls) -> tuple[ParamSpec, ...]:
        out = []
        for f in fields(cls):  # type: ignore[arg-type]
            minimum, optional, choices = f.metadata.get("param", (None, False, None))
            default = None if f.default is MISSING else f.default
            out.append(ParamSpec(f.name, default, minimum, optional, choices))
        return tuple(out)

    @classmethod
    def build(cls, values: Mapping[str, Any], where: str) -> "Policy":
        specs = {s.name: s for s in cls.params()}
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise ValueError(f"{where}: unknown argument(s) {unknown} for {cls.name}; allowed: {sorted(specs)}")
        return cls(**{k: specs[k].convert(v, where) for k, v in values.items()})

    @property
    def kind(self) -> str:
        return self.name

    # ----------------------------------------------------------- description
    @property
    def staleness_bound(self) -> Optional[int]:
        """The largest staleness a consumed sample can have under this policy (None: unbounded)."""
        return None

    def describe(self) -> str:
        """The canonical string form; ``parse_policy(p.describe()) == p``."""
        args = ", ".join(f"{s.name}={getattr(self, s.name)}" for s in self.params())
        return f"{self.name}({args})" if args else self.name

    # ------------------------------------------------------------- decisions
    def admission(self, view: SchedulerView, worker_version: int) -> Optional[Admit]:
        raise NotImplementedError

    def next_batch(self, view: SchedulerView) -> Optional[list[int]]:
        raise NotImplementedError

    def scorable(self, view: SchedulerView, attempt: Attempt) -> bool:
        return True

    def doomed(self, view: SchedulerView, attempt: Attempt) -> bool:
        return False

    def newly_doomed(self, view: SchedulerView) -> Iterable[Attempt]:
        """Live attempts that the update just issued made certain to break the cap."""
        return ()

    def exceeds_cap(self, staleness: Staleness) -> bool:
        return False


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available by its ``name`` to the parser, the config and the tests."""
    if not cls.name or cls.name in POLICIES:
        raise ValueError(f"policy name {cls.name!r} is empty or already registered")
    POLICIES[cls.name] = cls
    return cls


_CALL = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*$")


def parse_policy(text: str) -> Policy:
    """Parse ``sync``, ``step_off(2)``, ``step_off(n=2)``, ``fully_async(4)``,
    ``fully_async(eta=4, max_staleness=6, on_exceed=evict)``: positional arguments fill the
    parameters in order."""
    m = _CALL.match(text)
    if not m:
        raise ValueError(f"cannot parse policy {text!r}; expected e.g. 'sync', 'step_off(2)', 'fully_async(eta=2)'")
    name, argtext = m.group(1), (m.group(2) or "").strip()
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r} in {text!r}; choose {', '.join(POLICIES)}")
    where = f"policy {text!r}"
    args = [a.strip() for a in argtext.split(",") if a.strip()] if argtext else []
    names = [s.name for s in cls.params()]
    n_positional = next((i for i, a in enumerate(args) if "=" in a), len(args))
    if any("=" not in a for a in args[n_positional:]):
        raise ValueError(f"{where}: positional arguments must come before keyword arguments")
    if n_positional > len(names):
        raise ValueError(f"{where}: {name} takes " + (f"at most {len(names)} positional argument(s) ({', '.join(names)})"
                                                      if names else "no arguments"))
    values: dict[str, Any] = dict(zip(names, args[:n_positional]))
    for a in args[n_positional:]:
        key, value = (s.strip() for s in a.split("=", 1))
        if key in values:
            raise ValueError(f"{where}: {key} given twice")
        values[key] = value.strip("'\"")
    return cls.build(values, where)


def policy_from_mapping(tree: Mapping[str, Any]) -> Policy:
    """``{kind: step_off, n: 2}`` (a config's mapping form)."""
    d = dict(tree)
    kind = d.pop("kind", None)
    cls = POLICIES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"policy.kind must be one of {sorted(POLICIES)}, got {kind!r}")
    return cls.build(d, f"policy {kind}")


def policy_from(value: str | Mapping[str, Any]) -> Policy:
    """A policy from its string or its mapping form."""
    return parse_policy(value) if isinstance(value, str) else policy_from_mapping(value)
