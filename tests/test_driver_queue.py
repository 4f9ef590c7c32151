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


def test_a_train_answer_delays_a_sync_run_by_exactly_its_cost_per_step() -> None:
    """sync: the next batch is only admitted once the update's answer is handled, so each of
    the 20 steps is longer by the driver's time per update, nothing else moves."""
    assert _duration(["sim.costs.driver_event_s={'train': 0.05}"]) - _duration([]) == pytest.approx(20 * 0.05)


def test_driver_costs_slow_an_async_run_down_monotonically() -> None:
    base = ["run.total_steps=30", "pipeline.policy=fully_async(eta=2)"]
    rates = [simulate(load_config("configs/default.yaml", [*base, f"sim.costs.driver_event_s={{'generate': {g}}}"]),
                      None, progress=False)["samples_per_s"] for g in (0.0, 0.001, 0.004)]
    assert rates[0] > rates[1] > rates[2]


def test_unknown_event_kinds_are_refused_with_the_field() -> None:
    with pytest.raises(ConfigError, match="driver_event_s.*unknown event kind 'serve'"):
        load_config(None, ["sim.costs.driver_event_s={'serve': 0.001}"])
