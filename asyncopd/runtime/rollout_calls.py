"""How the real trainer's driver hands a rollout worker its requests (``rollout.batching``).

- ``wave``: the requests the controller assigns to a worker while its wave runs wait in the
  driver; when the wave's answer has been handled, they leave together as the next ``generate``
  call, and its results come back together.
- ``continuous``: the worker's engine takes requests into its running batch as slots free. One
  ``exchange`` call per worker is outstanding while it holds any: it carries the requests its
  previous answer caused, and answers once ``rollout.join_at()`` samples have ended (or the
  worker holds nothing else). Requests assigned while an exchange is outstanding (a gate that
  opened on a learner update) leave at once with ``submit``.

Either way ``in_wave`` is what the worker holds and has not delivered, which is what a worker's
death loses (``worker_faults.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from asyncopd.backends.base import GenRequest, GenResult
from asyncopd.runtime.calls import Pending

EXCHANGE = "exchange"  # the context of a continuous worker's ``exchange`` call


@dataclass
class WorkerQueue:
    waiting: list[GenRequest] = field(default_factory=list)  # assigned, not yet sent
    in_wave: set[int] = field(default_factory=set)  # sent, not yet delivered
    collecting: bool = False  # continuous: an ``exchange`` call is outstanding


class RolloutCalls:
    """The driver's side of it (a mixin of ``RayDriver``)."""

    cfg: Any
    queues: dict[str, WorkerQueue]
    rollout: dict[str, Any]
    _hold_waves: int
    _submit: Callable[[Any, Pending], None]

    def _start_wave(self, worker: str) -> None:
        """Send ``worker`` what waits for it, unless the actions of the current answer are still
        being dispatched (they leave together)."""
        q = self.queues[worker]
        if self._hold_waves:
            return
        if self.cfg.rollout.batching == "continuous":
            sent, q.waiting = q.waiting, []
            q.in_wave |= {r.sample_id for r in sent}
            shape = (self.cfg.rollout.max_num_seqs, self.cfg.rollout.join_at())
            if q.in_wave and not q.collecting:
                q.collecting = True
                self._submit(self.rollout[worker].exchange.remote(sent, *shape), Pending("gen", worker, EXCHANGE))
            elif sent:
                self.rollout[worker].submit.remote(sent, *shape)
            return
        if q.in_wave or not q.waiting:
            return
        wave, q.waiting = q.waiting, []
        q.in_wave = {r.sample_id for r in wave}
        self._submit(self.rollout[worker].generate.remote(wave), Pending("gen", worker, wave))

    def _delivered(self, worker: str, results: list[GenResult]) -> None:
        q = self.queues[worker]
        q.in_wave -= {r.sample_id for r in results}
        q.collecting = False
