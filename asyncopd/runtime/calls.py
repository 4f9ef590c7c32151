"""A call the real trainer's driver submitted to an actor and waits for (``runtime/driver.py``),
and the error a worker answers with when the driver has not taken it on yet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Pending:
    kind: str  # gen | score | train | sync | serve (a collective sync's learner half) | restart (a ``ready`` probe)
    worker: str
    context: Any = None
    issued: float = 0.0  # run clock
    incarnation: int = 0  # of the worker's process the call went to (``worker_faults.py``)


class FreshProcessError(RuntimeError):
    """A work call reached a worker process the driver has not taken on (``ready`` not called
    yet): Ray restarted the worker after a death the driver had not noticed, so the process
    lacks what the driver set up in the old one (weights, weight channel). The driver handles
    it as that death (``worker_faults.py``), instead of letting a fresh process generate with
    the initial weights under the old one's version."""
