"""Policies as strategies: one registry feeds the parser, the config and the property tests.

A fourth policy defined here (``scored_step_off(n)``: step_off's admission with sync's scoring
barrier) is one class plus its registration; the parser, the config and the controller's
property tests then take it with no code of their own.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncopd.config import ConfigError, load_config
from asyncopd.control.ledger import Attempt
from asyncopd.control.policies import POLICIES, BatchedPolicy, Policy, parse_policy, policy_from
from asyncopd.control.policy_base import SchedulerView, param
from tests import test_controller_properties as properties
from tests.controller_harness import registered_policies


@dataclass(frozen=True)
class ScoredStepOff(BatchedPolicy):
    """step_off(n) whose teacher waits for whole batches (as sync's does)."""

    name: ClassVar[str] = "scored_step_off"
    n: int = param(1, minimum=0)

    @property
    def lead(self) -> int:
        return self.n

    def scorable(self, view: SchedulerView, attempt: Attempt) -> bool:
        return view.generated_in_batch(attempt.batch) >= view.batch_size  # type: ignore[arg-type]


@contextmanager
def registered(cls: type[Policy]) -> Iterator[None]:
    POLICIES[cls.name] = cls
    try:
        yield
    finally:
        del POLICIES[cls.name]


@settings(max_examples=200, deadline=None)
@given(policy=registered_policies())
def test_every_policy_round_trips_through_its_string_and_mapping_forms(policy: Policy) -> None:
    again = parse_policy(policy.describe())
    assert again.describe() == policy.describe()  # (fully_async's on_exceed is not written without a cap)
    assert type(again) is type(policy) and again.staleness_bound == policy.staleness_bound
    mapping = {"kind": policy.kind, **{s.name: getattr(policy, s.name) for s in policy.params()}}
    assert policy_from(mapping) == policy


def test_a_fourth_policy_is_parsed_and_configured_once_registered() -> None:
    with pytest.raises(ConfigError, match="pipeline.policy"):
        load_config(None, ["pipeline.policy=scored_step_off(2)"])
    with registered(ScoredStepOff):
        assert parse_policy("scored_step_off(n=2)") == ScoredStepOff(2) == parse_policy("scored_step_off(2)")
        assert load_config(None, ["pipeline.policy={kind: scored_step_off, n: 3}"]).policy() == ScoredStepOff(3)
        with pytest.raises(ValueError, match="n must be >= 0"):
            parse_policy("scored_step_off(-1)")
    assert "scored_step_off" not in POLICIES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data(), seed=st.integers(0, 2**31))
def test_a_fourth_policy_is_checked_by_the_controller_property_tests(data, seed: int) -> None:
    """The property tests' own bodies, run on setups whose policy the registry-derived
    strategy drew as the new class."""
    with registered(ScoredStepOff):
        policy = data.draw(registered_policies().filter(lambda p: isinstance(p, ScoredStepOff)), label="policy")
        setup = {**data.draw(properties.setups, label="setup"), "policy": policy}
        for test in (properties.test_run_completes_and_every_prompt_is_accounted_for,
                     properties.test_consumed_staleness_within_policy_bound,
                     properties.test_worker_failures_never_deadlock_or_lose_prompts):
            test.hypothesis.inner_test(setup=dict(setup), seed=seed)


@pytest.mark.parametrize("text, message", [
    ("sync(1)", "sync takes no arguments"),
    ("step_off(1, 2)", "at most 1 positional"),
    ("step_off(n=1, n=2)", "n given twice"),
    ("fully_async(eta=1, 2)", "positional arguments must come before"),
    ("fully_async(eta=x)", "eta must be an integer"),
    ("fully_async(eta=none)", "eta must be given"),
    ("fully_async(on_exceed=drop)", "on_exceed must be one of evict, keep"),
    ("fully_async(cap=2)", "unknown argument"),
    ("nope(2)", "unknown policy 'nope'"),
    ("step_off(", "cannot parse policy"),
])
def test_bad_policy_strings_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_policy(text)
