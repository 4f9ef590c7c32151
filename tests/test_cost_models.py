"""Cost models are one interface, selected by name; the noise wrapper forwards all of it."""

from __future__ import annotations

import math

import pytest

from asyncopd.catalog import COST_MODEL_NAMES
from asyncopd.config import ConfigError, load_config
from asyncopd.config.schema import AnalyticParams
from asyncopd.planner.bounds import layout_bound
from asyncopd.planner.space import Layout, RolePlan
from asyncopd.planner.workload import Workload
from sim.analytic import AnalyticCosts
from sim.cost_model import COST_MODELS, CostModel, LayoutShape
from sim.costs import JitteredCosts, make_cost_model
from sim.parametric import ParametricCosts

H100 = ["models.student=qwen3-1.7b", "models.teacher=qwen3-8b", "models.dtype=bfloat16", "sim.cost_model=analytic",
        "cluster={device_type: cuda, num_devices: 8, hardware: h100-sxm}", "rollout.backend=vllm",
        "teacher.backend=vllm", "sim.prompt_tokens_mean=256", "rollout.max_new_tokens=2048", "learner.batch_size=64",
        "sim.response_length={kind: lognormal, mean: 1000, cv: 0.5, max: 2048}",
        "layout={rollout: {workers: 4, devices: [0, 1, 2, 3]}, teacher: {devices: [4, 5]}, learner: {devices: [6, 7]}}"]
TINY_NOISE = [f"sim.costs.{s}_cv=1e-9" for s in ("decode", "teacher", "learner", "sync", "dispatch")]


def test_every_name_the_config_accepts_has_one_implementation() -> None:
    assert set(COST_MODELS) == set(COST_MODEL_NAMES)
    assert COST_MODELS["parametric"] is ParametricCosts and COST_MODELS["analytic"] is AnalyticCosts
    assert isinstance(make_cost_model(load_config(None, [])), ParametricCosts)
    assert isinstance(make_cost_model(load_config(None, H100)), AnalyticCosts)
    with pytest.raises(ConfigError, match="sim.cost_model"):
        load_config(None, ["sim.cost_model=roofline"])


def test_the_analytic_overheads_are_the_configs() -> None:
    """Their defaults are written once, in ``AnalyticParams``; a config override reaches the model."""
    assert AnalyticCosts.from_config(load_config(None, H100)).overheads == AnalyticParams()
    slow = AnalyticCosts.from_config(load_config(None, [*H100, "sim.analytic.dispatch_s=0.5"]))
    assert slow.dispatch() == 0.5


def test_parametric_model_ignores_layout_and_memory() -> None:
    costs = make_cost_model(load_config(None, []))
    assert not costs.layout_sensitive
    assert costs.for_layout(LayoutShape(rollout_tp=4, total_devices=8)) is costs
    assert costs.kv_capacity_seqs(1000.0, 0.9) is None


def test_analytic_model_for_a_layout_uses_its_tensor_parallel_degree() -> None:
    base = make_cost_model(load_config(None, H100))
    assert base.layout_sensitive and base.shape.rollout_tp == 1
    tp2 = base.for_layout(LayoutShape(rollout_tp=2, teacher_tp=2, learner_devices=2, total_devices=8))
    assert tp2.kv_capacity_seqs(2304, 0.9) > 2 * base.kv_capacity_seqs(2304, 0.9)  # twice the memory, one copy of the weights
    assert tp2.decode_segment(8, 1000)[1] == pytest.approx(base.decode_segment(8, 1000)[1] / 2)


def test_noise_wrapper_forwards_the_whole_interface() -> None:
    """The pruning bound's bug: a jittered analytic model used to keep the config's tensor-parallel
    degree for every layout (duck typing did not see through the wrapper)."""
    plain = make_cost_model(load_config(None, H100))
    noisy = make_cost_model(load_config(None, [*H100, *TINY_NOISE]), seed=3)
    assert isinstance(noisy, JitteredCosts) and isinstance(noisy, CostModel) and noisy.layout_sensitive
    shape = LayoutShape(rollout_tp=2, teacher_tp=2, learner_devices=2, total_devices=8)
    moved = noisy.for_layout(shape)
    assert isinstance(moved, JitteredCosts) and moved.base.shape == shape
    assert moved.kv_capacity_seqs(2304, 0.9) == plain.for_layout(shape).kv_capacity_seqs(2304, 0.9)
    for stage in ("prefill", "dispatch"):
        args = (512,) if stage == "prefill" else ()
        assert getattr(moved, stage)(*args) == pytest.approx(getattr(plain.for_layout(shape), stage)(*args), rel=1e-6)


def test_pruning_bound_of_a_jittered_analytic_model_follows_the_layout() -> None:
    cfg_plain, cfg_noisy = load_config(None, H100), load_config(None, [*H100, *TINY_NOISE])
    w = Workload.from_config(cfg_plain)
    layout = Layout("none", rollout=RolePlan(0, 4, 2, 2), teacher=RolePlan(4, 2, 2, 1), learner=RolePlan(6, 2, 1, 1),
                    num_devices=8)
    want = layout_bound(layout, w, make_cost_model(cfg_plain).for_layout(layout.shape()), slots=64)
    got = layout_bound(layout, w, make_cost_model(cfg_noisy).for_layout(layout.shape()), slots=64)
    stale = layout_bound(layout, w, make_cost_model(cfg_plain), slots=64)  # the config's tp 1: what the bug gave
    assert not math.isclose(stale.rates["rollout"], want.rates["rollout"], rel_tol=1e-3)
    for role in ("rollout", "teacher", "learner"):
        assert got.rates[role] == pytest.approx(want.rates[role], rel=1e-6)
