"""A call the real trainer's driver submitted to an actor and waits for (``runtime/driver.py``)."""

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
