"""Plain callbacks on a SimPy environment, ordered exactly as generator processes would be.

A SimPy process costs a generator resume per event it waits for, and an interruption costs
an exception thrown through its frames. The simulator's hot loops (``sim/rollout.py``) run
as callbacks instead, and keep the order of events a process would have produced:

- SimPy orders the event queue by ``(time, priority, insertion)``; a process starts through
  an *urgent* event scheduled when it is created, and ``Process.interrupt`` schedules an
  urgent event too. ``call_soon`` is that urgent event, with the callback in place of the
  process's resume: what would have run when the process started, or when it was
  interrupted, runs at the same place in the queue.
- A process that waits ``yield env.timeout(d)`` resumes from that timeout's callbacks;
  ``env.timeout(d).callbacks.append(f)`` is the same timeout, inserted at the same moment.
- A process's own end is an event nobody waits for: leaving it out moves no other event
  (the order of the rest depends only on their own times, priorities and insertion order).
"""

from __future__ import annotations

from typing import Any, Callable

import simpy
from simpy.events import NORMAL, URGENT


class Soon(simpy.Event):
    """An event at the current time, ahead of the time's normal events (a process start's or
    an interruption's place), whose only callback is ``callback``."""

    def __init__(self, env: simpy.Environment, callback: Callable[[Any], None]) -> None:
        self.env = env  # (initialised as SimPy's own Initialize event is: triggered and scheduled)
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        env.schedule(self, URGENT)


class Later(simpy.Event):
    """``env.timeout(delay)`` with ``callback`` as its only callback, built without the
    generic ``Timeout``'s checks and the list append: scheduled the same way (normal
    priority, inserted now), so it takes the same place in the queue. ``delay`` >= 0."""

    def __init__(self, env: simpy.Environment, delay: float, callback: Callable[[Any], None]) -> None:
        self.env = env
        self.callbacks = [callback]
        self._value = None
        self._ok = True
        env.schedule(self, NORMAL, delay)


def call_soon(env: simpy.Environment, fn: Callable[[], None]) -> None:
    """Run ``fn()`` where a process created now would start (or one interrupted now resume)."""
    Soon(env, lambda _: fn())


def call_after(env: simpy.Environment, seconds: float, fn: Callable[[], None]) -> None:
    """Run ``fn()`` where a process that now waits ``env.timeout(seconds)`` would resume."""
    Later(env, seconds, lambda _: fn())
