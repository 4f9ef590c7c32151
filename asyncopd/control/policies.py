"""The scheduling policies: when a prompt may start, and what the learner consumes.

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

The interface each one implements, and the parser, are in ``asyncopd/control/policy_base.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from typing import ClassVar, Iterable, Literal, Optional

from asyncopd.control.ledger import Attempt
from asyncopd.control.policy_base import (
    POLICIES, Admit, Policy, SchedulerView, param, parse_policy, policy_from, policy_from_mapping, register_policy,
)
from asyncopd.control.staleness import Staleness

_OLDEST_REQUEUED, _FRESH = Admit(0), Admit(None)  # (decisions are immutable: one of each will do)

__all__ = ["POLICIES", "BatchedPolicy", "Policy", "SyncPolicy", "StepOffPolicy", "FullyAsyncPolicy", "parse_policy",
           "policy_from", "policy_from_mapping", "register_policy"]


class BatchedPolicy(Policy):
    """Prompt ``i`` belongs to batch ``i // B``; update ``s`` trains on all of batch ``s``; a
    batch-``b`` sample starts only on a worker holding version ``>= b - lead``."""

    batched: ClassVar[bool] = True

    @property
    def lead(self) -> int:
        raise NotImplementedError

    @property
    def staleness_bound(self) -> Optional[int]:
        return self.lead

    def admission(self, view: SchedulerView, worker_version: int) -> Optional[Admit]:
        limit = worker_version + self.lead
        for i, (_, batch, _) in enumerate(view.requeued):
            if batch is not None and batch <= limit:
                return Admit(i, batch)
        batch = view.fresh_admitted // view.batch_size
        if batch < view.total_steps and batch <= limit and view.prompts_left:
            return Admit(None, batch)
        return None

    def next_batch(self, view: SchedulerView) -> Optional[list[int]]:
        ready = view.ready_in_batch(view.steps_issued)
        return list(ready) if len(ready) >= view.batch_size else None


@register_policy
@dataclass(frozen=True)
class SyncPolicy(BatchedPolicy):
    """Generate → score → train → sync, strictly in sequence (scoring waits for the whole batch)."""

    name: ClassVar[str] = "sync"

    @property
    def lead(self) -> int:
        return 0

    def scorable(self, view: SchedulerView, attempt: Attempt) -> bool:
        return view.generated_in_batch(attempt.batch) >= view.batch_size  # type: ignore[arg-type]


@register_policy
@dataclass(frozen=True)
class StepOffPolicy(BatchedPolicy):
    """Rollout runs up to ``n`` batches ahead of the learner, overlapping continuously."""

    name: ClassVar[str] = "step_off"
    n: int = param(1, minimum=0)

    @property
    def lead(self) -> int:
        return self.n

    def describe(self) -> str:
        return f"step_off({self.n})"


@register_policy
@dataclass(frozen=True)
class FullyAsyncPolicy(Policy):
    """AReaL admission ``admitted <= (eta + version + 1) * B``; optional hard per-sample cap."""

    name: ClassVar[str] = "fully_async"
    eta: int = param(2, minimum=0)
    max_staleness: Optional[int] = param(None, minimum=0, optional=True)
    on_exceed: Literal["evict", "keep"] = param("evict", choices=("evict", "keep"))

    def admission_limit(self, batch_size: int, version: int) -> int:
        """Admitted samples (net of aborts and evictions) allowed at learner version ``version``."""
        return (self.eta + version + 1) * batch_size

    @cached_property  # (asked for every generated and every scored sample)
    def evicts(self) -> bool:
        return self.max_staleness is not None and self.on_exceed == "evict"

    @property
    def staleness_bound(self) -> Optional[int]:
        return self.max_staleness if self.evicts else None

    def describe(self) -> str:
        parts = [f"eta={self.eta}"]
        if self.max_staleness is not None:
            parts += [f"max_staleness={self.max_staleness}", f"on_exceed={self.on_exceed}"]
        return f"fully_async({', '.join(parts)})"

    def admission(self, view: SchedulerView, worker_version: int) -> Optional[Admit]:
        held, batch_size = view.held, view.batch_size  # held: admitted, minus aborted / evicted permits
        if held >= (self.eta + view.version + 1) * batch_size or held >= view.total_steps * batch_size:
            return None  # (the first test is ``admission_limit``, inlined: this runs per admission)
        if view.requeued:
            return _OLDEST_REQUEUED
        return _FRESH if view.prompts_left else None

    def next_batch(self, view: SchedulerView) -> Optional[list[int]]:
        # (over-cap ready samples are already gone: checked on arrival and after every update)
        if view.ready_count() < view.batch_size:
            return None
        return list(islice(view.ready_in_order(), view.batch_size))

    def doomed(self, view: SchedulerView, attempt: Attempt) -> bool:
        """Certain to exceed the hard cap: the earliest update that could consume it is
        ``steps_issued``, and staleness only grows from there."""
        return self.evicts and view.steps_issued - attempt.start_version > self.max_staleness  # type: ignore[operator]

    def newly_doomed(self, view: SchedulerView) -> Iterable[Attempt]:
        if not self.evicts:
            return ()
        return [a for a in view.live_attempts() if not a.doomed and self.doomed(view, a)]

    def exceeds_cap(self, staleness: Staleness) -> bool:
        return self.max_staleness is not None and staleness.max > self.max_staleness
