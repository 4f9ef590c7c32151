"""Scheduling policies: when a prompt may start, and what the learner consumes.

Batched policies (``sync``, ``step_off(n)``) number fresh prompts into batches of ``B``:
prompt ``i`` belongs to batch ``b = i // B`` and learner update ``s`` trains on exactly batch
``s``. A batch-``b`` sample may start on a worker holding version ``v`` only if
``b <= v + lead``. Since its tokens are sampled by versions ``>= v >= b - lead`` and it is
consumed by update ``b``, its staleness is at most ``lead``: 0 for ``sync``, ``n`` for
``step_off(n)``. Workers never drain: as soon as version ``v`` reaches a worker, batch
``v + lead`` may start there while earlier batches are still generating.

The streaming policy (``fully_async(eta)``) uses AReaL's admission rule: with ``v`` the
learner's version (updates finished) a new prompt may start only while

    admitted - aborted - evicted  <  (eta + v + 1) * B,

(aborted and evicted samples return their permits), and the learner takes the first ``B``
ready samples in completion order. The ``n``-th admitted sample (0-based) therefore starts on
a version ``>= n // B - eta``; taken in order it is consumed by update ``n // B``, so its
staleness is at most ``eta`` (exactly ``eta`` in steady state when the learner is the
bottleneck). While the learner is idle this lets ``(eta + 1) * B`` samples be live. Admission
alone bounds nothing per sample, though: a long response can be overtaken indefinitely.
``max_staleness`` with ``on_exceed="evict"`` is a hard per-sample cap; with
``on_exceed="keep"`` over-cap samples are consumed and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Union


@dataclass(frozen=True)
class SyncPolicy:
    """Generate → score → train → sync, strictly in sequence (scoring waits for the batch)."""

    kind: Literal["sync"] = "sync"

    batched = True
    scoring_barrier = True

    @property
    def lead(self) -> int:
        return 0

    @property
    def staleness_bound(self) -> int | None:
        return 0

    def describe(self) -> str:
        return "sync"


@dataclass(frozen=True)
class StepOffPolicy:
    """Rollout runs up to ``n`` batches ahead of the learner, overlapping continuously."""

    n: int = 1
    kind: Literal["step_off"] = "step_off"

    batched = True
    scoring_barrier = False

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"step_off: n must be >= 0, got {self.n}")

    @property
    def lead(self) -> int:
        return self.n

    @property
    def staleness_bound(self) -> int | None:
        return self.n

    def describe(self) -> str:
        return f"step_off({self.n})"


@dataclass(frozen=True)
class FullyAsyncPolicy:
    """AReaL admission ``admitted <= (eta + version + 1) * B``; optional hard per-sample cap."""

    eta: int = 2
    max_staleness: int | None = None
    on_exceed: Literal["evict", "keep"] = "evict"
    kind: Literal["fully_async"] = "fully_async"

    batched = False
    scoring_barrier = False

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"fully_async: eta must be >= 0, got {self.eta}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"fully_async: max_staleness must be >= 0, got {self.max_staleness}")
        if self.on_exceed not in ("evict", "keep"):
            raise ValueError(f"fully_async: on_exceed must be 'evict' or 'keep', got {self.on_exceed!r}")

    def admission_limit(self, batch_size: int, version: int) -> int:
        """Admitted samples (net of aborts and evictions) allowed at learner version ``version``."""
        return (self.eta + version + 1) * batch_size

    @property
    def evicts(self) -> bool:
        return self.max_staleness is not None and self.on_exceed == "evict"

    @property
    def staleness_bound(self) -> int | None:
        return self.max_staleness if self.evicts else None

    def describe(self) -> str:
        parts = [f"eta={self.eta}"]
        if self.max_staleness is not None:
            parts += [f"max_staleness={self.max_staleness}", f"on_exceed={self.on_exceed}"]
        return f"fully_async({', '.join(parts)})"


Policy = Union[SyncPolicy, StepOffPolicy, FullyAsyncPolicy]

_CALL = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*$")


def parse_policy(text: str) -> Policy:
    """Parse ``sync``, ``step_off(2)``, ``step_off(n=2)``, ``fully_async(eta=4, max_staleness=6,
    on_exceed=evict)`` or ``fully_async(4)``."""
    m = _CALL.match(text)
    if not m:
        raise ValueError(f"cannot parse policy {text!r}; expected e.g. 'sync', 'step_off(2)', 'fully_async(eta=2)'")
    name, argtext = m.group(1), (m.group(2) or "").strip()
    args: list[str] = [a.strip() for a in argtext.split(",") if a.strip()] if argtext else []
    positional = [a for a in args if "=" not in a]
    keywords = dict(a.split("=", 1) for a in args if "=" in a)
    keywords = {k.strip(): v.strip().strip("'\"") for k, v in keywords.items()}

    def as_int(v: str, field: str) -> int | None:
        if v.lower() in ("none", "null"):
            return None
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"policy {text!r}: {field} must be an integer, got {v!r}") from None

    if name == "sync":
        if args:
            raise ValueError(f"policy {text!r}: sync takes no arguments")
        return SyncPolicy()
    if name == "step_off":
        n = positional[0] if positional else keywords.pop("n", "1")
        extra = set(keywords) - {"n"}
        if extra:
            raise ValueError(f"policy {text!r}: unknown argument(s) {sorted(extra)} for step_off")
        return StepOffPolicy(n=as_int(n, "n") or 0)
    if name == "fully_async":
        if positional:
            keywords.setdefault("eta", positional[0])
        extra = set(keywords) - {"eta", "max_staleness", "on_exceed"}
        if extra:
            raise ValueError(f"policy {text!r}: unknown argument(s) {sorted(extra)} for fully_async")
        return FullyAsyncPolicy(
            eta=as_int(keywords.get("eta", "2"), "eta") or 0,
            max_staleness=as_int(keywords["max_staleness"], "max_staleness") if "max_staleness" in keywords else None,
            on_exceed=keywords.get("on_exceed", "evict"),  # type: ignore[arg-type]
        )
    raise ValueError(f"unknown policy {name!r} in {text!r}; choose sync, step_off or fully_async")
