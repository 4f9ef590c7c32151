"""The driver as a server in the simulator (sim/driver.py, sim.costs.driver_event_s): closed
forms on the sync policy, where every answer the driver handles is on the critical path."""

from __future__ import annotations

import pytest

from asyncopd.config import load_config
from asyncopd.config.loader import ConfigError
from sim.driver import simulate

BASE = ["run.total_steps=20", "pipeline.policy=sync"]


def _duration(extra: list[str]) -> float:
    return simulate(load_config("configs/default.yaml", [*BASE, *extra]), None, progress=False)["duration_s"]


def test_zero_driver_costs_change_nothing() -> None:
    assert _duration(["sim.costs.driver_event_s={'train': 0.0, 'generate': 0.0}"]) == _duration([])


def test_a_train_answer_delays_each_sync_step_by_exactly_its_cost() -> None:
    """sync: the update's answer is stamped on receipt, and its actions (weight syncs, the next
    batch's requests) leave when the driver has handled it, so every step but the last (the
    20th update's answer ends the run at its stamp) is longer by the driver's time per update;
    nothing else moves."""
    base, low, high = (_duration([f"sim.costs.driver_event_s={{'train': {c}}}"] if c else []) for c in (0, 0.05, 0.08))
    assert low - base == pytest.approx(19 * 0.05)
    assert high - base == pytest.approx(19 * 0.08)


def test_driver_costs_slow_an_async_run_down_monotonically() -> None:
    base = ["run.total_steps=30", "pipeline.policy=fully_async(eta=2)"]
    rates = [simulate(load_config("configs/default.yaml", [*base, f"sim.costs.driver_event_s={{'generate': {g}}}"]),
                      None, progress=False)["samples_per_s"] for g in (0.0, 0.001, 0.004)]
    assert rates[0] > rates[1] > rates[2]


def test_unknown_event_kinds_are_refused_with_the_field() -> None:
    with pytest.raises(ConfigError, match="driver_event_s.*unknown event kind 'serve'"):
        load_config(None, ["sim.costs.driver_event_s={'serve': 0.001}"])
