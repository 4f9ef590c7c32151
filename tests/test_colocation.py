"""Device sharing per pair of roles (asyncopd/config/colocation.py): one rule for the simulator,
the calibration and the planner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.config import load_config
from asyncopd.config.colocation import ROLES, Sharing, pair_key, shared_pairs
from asyncopd.config.loader import ConfigError
from asyncopd.config.placement import placement

roles = st.sampled_from(ROLES)


@settings(max_examples=80, deadline=None)
@given(phi=st.floats(0, 3), me=roles, others=st.lists(roles, max_size=5))
def test_one_value_for_every_pair_is_the_k_workers_rule(phi, me, others) -> None:
    assert Sharing(phi).slowdown(me, others) == pytest.approx(1 + phi * len(others))


@settings(max_examples=80, deadline=None)
@given(a=roles, b=roles, phi=st.floats(0, 3), rest=st.floats(0, 3))
def test_a_pair_is_symmetric_and_only_its_own_factor_changes(a, b, phi, rest) -> None:
    s = Sharing(rest, {pair_key(b, a): phi})
    assert s.phi(a, b) == s.phi(b, a) == phi
    for x in ROLES:
        for y in ROLES:
            if {x, y} != {a, b}:
                assert s.phi(x, y) == rest


def test_best_gain_of_a_device() -> None:
    assert Sharing(1.0).best_gain(["teacher", "learner"]) == 1.0  # fair time slicing gains nothing
    assert Sharing(0.5).best_gain(["teacher", "learner"]) == pytest.approx(2 / 1.5)
    # two rollout workers that slow each other down: the best is one running alone
    assert Sharing(0.5, {"rollout+rollout": 1.5}).best_gain(["rollout", "rollout"]) == 1.0


def test_pairs_a_layout_shares() -> None:
    cfg = load_config("configs/default.yaml")
    assert shared_pairs(placement(cfg.layout)) == {"teacher+learner"}
    two = load_config("configs/default.yaml", ["layout.rollout.workers=2"])
    assert shared_pairs(placement(two.layout)) == {"rollout+rollout", "teacher+learner"}


def test_config_accepts_pairs_in_any_order_and_rejects_unknown_roles() -> None:
    cfg = load_config(None, ["sim.costs.colocation_pairs={'learner+teacher': 0.9}"])
    assert cfg.sim.costs.colocation_pairs == {"teacher+learner": 0.9}
    with pytest.raises(ConfigError, match="colocation_pairs.*critic"):
        load_config(None, ["sim.costs.colocation_pairs={'rollout+critic': 1.0}"])
    with pytest.raises(ConfigError, match="colocation_pairs"):
        load_config(None, ["sim.costs.colocation_pairs={'rollout+rollout': 11}"])


@settings(max_examples=80, deadline=None)
@given(a=roles, b=roles, ab=st.floats(0, 3), ba=st.floats(0, 3), sym=st.floats(0, 3), rest=st.floats(0, 3))
def test_a_directed_entry_wins_over_its_pair_and_only_in_its_direction(a, b, ab, ba, sym, rest) -> None:
    s = Sharing(rest, {f"{a}|{b}": ab, pair_key(a, b): sym})
    assert s.phi(a, b) == ab
    assert s.phi(b, a) == (ab if a == b else sym)
    s2 = Sharing(rest, {f"{a}|{b}": ab, f"{b}|{a}": ba})
    assert s2.phi(b, a) == ba and s2.phi(a, b) == (ba if a == b else ab)
    assert s2.slowdown(a, [b, b]) == pytest.approx(1 + 2 * s2.phi(a, b))


def test_measured_pairs_need_the_pair_or_both_directions() -> None:
    from asyncopd.config.colocation import measured_pairs

    assert measured_pairs({"teacher+learner": 1, "rollout|teacher": 1}) == {"teacher+learner"}
    assert measured_pairs({"rollout|teacher": 1, "teacher|rollout": 1, "rollout|rollout": 1}) == {
        "rollout+teacher", "rollout+rollout"}


def test_config_keeps_directed_entries_in_their_order() -> None:
    cfg = load_config(None, ["sim.costs.colocation_pairs={'teacher|rollout': 1.1, 'rollout | teacher': 1.65}"])
    assert cfg.sim.costs.colocation_pairs == {"teacher|rollout": 1.1, "rollout|teacher": 1.65}
    with pytest.raises(ConfigError, match="colocation_pairs.*critic"):
        load_config(None, ["sim.costs.colocation_pairs={'rollout|critic': 1.0}"])
