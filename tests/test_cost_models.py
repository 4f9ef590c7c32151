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


def test_parametric_model_ignores_tensor_parallelism_and_memory() -> None:
    costs = make_cost_model(load_config(None, []))
    assert not costs.layout_sensitive  # (the planner searches tp only for a model it changes)
    assert costs.for_layout(LayoutShape(rollout_tp=4, total_devices=8)) is costs
    assert costs.kv_capacity_seqs(1000.0, 0.9) is None
    assert costs.for_layout(LayoutShape(rollout_tp=4, learner_devices=2, total_devices=8)).learner_devices == 2


# ---------------------------------------------------------------- data-parallel learner, weight sync
STUDENT_GRAD_BYTES = 54336 * 4  # the built-in student's parameters, fp32 gradients


def test_a_learner_on_one_device_costs_what_it_always_did() -> None:
    c = load_config(None, []).sim.costs
    costs = make_cost_model(load_config(None, []))
    assert costs.learner_devices == 1 and costs.dp_comm() == 0.0
    for tokens in (1, 997, 12345):
        assert costs.learner(tokens, 16) == c.learner_fixed_s + c.learner_per_token_s * tokens  # bit for bit


@pytest.mark.parametrize("strategy, k", [("ddp", 2), ("fsdp", 3)])
def test_two_learner_devices_halve_the_compute_and_add_the_gradient_traffic(strategy, k) -> None:
    """learner(T) = fixed + per_token * T / N + k (N-1)/N * G / bw + k (N-1) * lat; N = 2:
    fixed + per_token * T / 2 + k/2 * G / bw + k * lat (k = 2 all-reduce, 3 fsdp)."""
    cfg = load_config(None, ["layout.learner.devices=[0, 1]", f"learner.strategy={strategy}",
                             "sim.costs.allreduce_bytes_per_s=2e8", "sim.costs.allreduce_latency_s=3e-4"])
    costs, c = make_cost_model(cfg), cfg.sim.costs
    assert costs.learner_devices == 2 and costs.grad_bytes == STUDENT_GRAD_BYTES
    comm = k / 2 * STUDENT_GRAD_BYTES / 2e8 + k * 3e-4
    assert costs.dp_comm() == pytest.approx(comm, rel=1e-12)
    for tokens in (100, 4000):
        assert costs.learner(tokens, 16) == pytest.approx(c.learner_fixed_s + c.learner_per_token_s * tokens / 2 + comm,
                                                          rel=1e-12)
    one = make_cost_model(load_config(None, []))
    assert costs.learner(4000, 16) - costs.learner(2000, 16) == pytest.approx((one.learner(4000, 16) -
                                                                               one.learner(2000, 16)) / 2)
    # the layout's device count reaches the model through for_layout, as the planner asks for it
    moved = one.for_layout(LayoutShape(learner_devices=2))
    assert moved.learner(4000, 16) == pytest.approx(make_cost_model(load_config(None, [
        "layout.learner.devices=[0, 1]"])).learner(4000, 16), rel=1e-12)
    # model_bytes, when set, is the gradient volume
    big = make_cost_model(load_config(None, ["layout.learner.devices=[0, 1]", "sim.costs.model_bytes=4e8"]))
    assert big.grad_bytes == 4e8


def test_a_several_device_learner_of_an_unknown_size_says_which_field_to_set() -> None:
    costs = ParametricCosts(load_config(None, []).sim.costs, 0.0, learner_devices=2, grad_bytes=None)
    with pytest.raises(ValueError, match="sim.costs.model_bytes"):
        costs.learner(100, 4)
    assert ParametricCosts(load_config(None, []).sim.costs, 0.0, grad_bytes=None).learner(100, 4) > 0


def test_a_collective_sync_pays_one_latency_per_bucket() -> None:
    """pause = sync_fixed_s + W / sync_bytes_per_s (+ ceil(W / K) * sync_bucket_latency_s, collective)."""
    W, K = 200 * 2**20, 64 * 2**20  # 4 buckets
    base = ["sim.costs.model_bytes=209715200", "sim.costs.sync_bucket_latency_s=0.01", "sync.bucket_mb=64"]
    c = load_config(None, base).sim.costs
    collective = make_cost_model(load_config(None, [*base, "sync.method=collective"]))
    store = make_cost_model(load_config(None, [*base, "sync.method=object_store"]))
    assert collective.bucket_bytes == K and store.bucket_bytes is None
    assert store.sync().pause_s == c.sync_fixed_s + W / c.sync_bytes_per_s  # today's model, exactly
    assert collective.sync().pause_s == pytest.approx(c.sync_fixed_s + W / c.sync_bytes_per_s + 4 * 0.01, rel=1e-12)
    assert make_cost_model(load_config(None, [*base[1:], "sync.method=auto"])).sync().pause_s == c.sync_fixed_s
    # auto resolves as the trainer does: collective with the torch rollout backend
    assert make_cost_model(load_config(None, base)).sync() == collective.sync()


def test_the_analytic_learner_follows_the_same_convention() -> None:
    """dp = 2 on two H100s, bf16 gradients: ddp pays 2 * 1/2 * G / link + 2 * lat, fsdp
    3 * 1/2 * G / link + 3 * lat; one device pays neither."""
    from asyncopd.catalog import get_hardware

    ddp = make_cost_model(load_config(None, H100))
    fsdp = make_cost_model(load_config(None, [*H100, "learner.strategy=fsdp"]))
    g, link, lat = 2 * ddp.student.n_params, get_hardware("h100-sxm").link_bw(2), AnalyticParams().allreduce_latency_s
    assert fsdp.learner(8000, 16) - ddp.learner(8000, 16) == pytest.approx(0.5 * g / link + lat, rel=1e-9)
    one = ddp.for_layout(LayoutShape(learner_devices=1, total_devices=8))
    compute = one.learner(8000, 16) - AnalyticParams().learner_fixed_s - AnalyticParams().micro_batch_s
    assert ddp.learner(8000, 16) == pytest.approx(AnalyticParams().learner_fixed_s + AnalyticParams().micro_batch_s
                                                  + compute / 2 + g / link + 2 * lat, rel=1e-9)


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


def test_the_pruning_bound_of_a_parametric_model_follows_the_learners_devices() -> None:
    """The planner's bound asks ``for_layout(layout.shape())``: a learner on two cores bounds at
    what the simulator will charge it (compute / 2 + all-reduce)."""
    cfg = load_config(None, [])
    w = Workload.from_config(cfg)
    one = Layout("none", RolePlan(0, 1, 1, 1), RolePlan(1, 1, 1, 1), RolePlan(2, 1, 1, 1), 3)
    two = Layout("none", RolePlan(0, 1, 1, 1), RolePlan(1, 1, 1, 1), RolePlan(2, 2, 1, 1), 4)
    base = make_cost_model(cfg)
    b1, b2 = (layout_bound(lay, w, base.for_layout(lay.shape()), slots=8) for lay in (one, two))
    B, S = w.batch_size, w.prompt_tokens + w.response_mean
    assert b2.rates["learner"] == pytest.approx(B / base.for_layout(LayoutShape(learner_devices=2)).learner(int(B * S), B))
    assert b1.rates["learner"] < b2.rates["learner"] < 2 * b1.rates["learner"]
