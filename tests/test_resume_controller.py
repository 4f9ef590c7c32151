"""Resuming the pure controller at a version and a data position (``start_version``,
``first_prompt_id``): the counters continue, no prompt is consumed twice across the two runs."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncopd.control import messages as M
from asyncopd.control.controller import Controller
from asyncopd.control.policies import FullyAsyncPolicy, StepOffPolicy, SyncPolicy
from tests.controller_harness import FakeCluster
from tests.test_controller_properties import setups


class CheckpointingCluster(FakeCluster):
    """Takes ``resume_point()`` where the real driver does: as the update that produces
    version ``at`` finishes, before the controller hears of it."""

    at: int = -1
    point: dict | None = None

    def send(self, ev: M.Event) -> None:
        if isinstance(ev, M.TrainStepFinished) and ev.step + 1 == self.at:
            self.point = self.ctrl.resume_point()
        super().send(ev)


def start_at(ctrl: Controller, rng: random.Random, version: int) -> FakeCluster:
    cluster = FakeCluster(ctrl, rng)
    cluster.worker_version = {w: version for w in ctrl.workers}
    cluster.send(M.RunStarted(0.0))
    cluster.send(M.PromptsAvailable(0.0, None))
    return cluster


def finish(cluster: FakeCluster) -> None:
    while cluster.step():
        assert cluster.events < 20_000, "run did not terminate"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31), data=st.data())
def test_resumed_controller_continues_without_training_a_prompt_twice(setup: dict, seed: int, data) -> None:
    setup = {**setup, "teacher_min_batch": min(setup["teacher_min_batch"], setup["teacher_max_batch"])}
    total, B = setup["total_steps"], setup["batch_size"]
    if total < 2:
        setup["total_steps"] = total = 2
    at = data.draw(st.integers(1, total - 1), label="checkpoint version")

    first = CheckpointingCluster(Controller(**setup), random.Random(seed))
    first.at = at
    first.start()
    finish(first)
    point = first.point
    assert point is not None and point["version"] == at
    before = [a for a in first.ctrl.samples.values() if a.status == "consumed" and a.consumed_step < at]
    assert len(before) == B * at and point["counters"]["consumed"] == B * at
    assert all(a.prompt_id < point["next_prompt_id"] for a in before)
    assert not {a.prompt_id for a in before} & set(point["skipped_prompts"])

    ctrl = Controller(**setup, start_version=at, first_prompt_id=point["next_prompt_id"],
                      first_sample_id=point["next_sample_id"], counters=point["counters"])
    assert (ctrl.version, ctrl.steps_issued) == (at, at)
    second = start_at(ctrl, random.Random(seed + 1), at)
    finish(second)  # (the harness checks the invariants after every event)
    assert ctrl.done and ctrl.ok and ctrl.version == total
    after = [a for a in ctrl.samples.values() if a.status == "consumed"]
    assert sorted({a.consumed_step for a in after}) == list(range(at, total))
    assert len(after) == B * (total - at)
    prompts = [a.prompt_id for a in before + after]
    assert len(prompts) == len(set(prompts)), "a prompt was trained twice across the resume"
    assert all(a.prompt_id >= point["next_prompt_id"] for a in ctrl.samples.values())
    assert min(ctrl.samples) >= point["next_sample_id"]
    assert ctrl.counters["attempts"] == point["counters"]["attempts"] + len(ctrl.samples)
    bound = setup["policy"].staleness_bound
    for a in after:
        assert a.staleness.min >= 0 and a.start_version >= at
        if bound is not None:
            assert a.staleness.max <= bound


@pytest.mark.parametrize("policy", [SyncPolicy(), StepOffPolicy(n=2), FullyAsyncPolicy(eta=1)])
def test_resumed_controller_starts_at_the_version_and_data_position(policy) -> None:
    ctrl = Controller(policy=policy, batch_size=3, total_steps=6, rollout_slots=[4, 4], n_teachers=1,
                      teacher_max_batch=4, start_version=4, first_prompt_id=17, first_sample_id=40,
                      counters={"attempts": 30, "prompts_admitted": 25, "consumed": 999, "aborted": 2})
    assert ctrl.counters["consumed"] == 12  # batch_size * start_version, whatever was passed
    actions = ctrl.handle(M.RunStarted(0.0)) + ctrl.handle(M.PromptsAvailable(0.0, None))
    gens = [a for a in actions if isinstance(a, M.Generate)]
    assert gens and [g.prompt_id for g in gens] == list(range(17, 17 + len(gens)))
    assert [g.sample_id for g in gens] == list(range(40, 40 + len(gens)))
    assert not [a for a in actions if isinstance(a, M.SyncWeights)]  # workers already hold version 4
    assert all(ctrl.samples[g.sample_id].issue_version == 4 for g in gens)
    if policy.batched:
        assert {ctrl.samples[g.sample_id].batch for g in gens} <= {4, 5}
    assert ctrl.counters["prompts_admitted"] == 25 + len(gens)
    ctrl.check_invariants()


def test_resume_arguments_are_checked() -> None:
    kw = dict(policy=SyncPolicy(), batch_size=2, total_steps=3, rollout_slots=[2], n_teachers=1, teacher_max_batch=2)
    with pytest.raises(ValueError, match="start_version"):
        Controller(**kw, start_version=3)
    with pytest.raises(ValueError, match=">= 0"):
        Controller(**kw, first_prompt_id=-1)


def test_resume_point_of_a_stopped_run_lists_the_unfinished_prompts() -> None:
    ctrl = Controller(policy=StepOffPolicy(n=1), batch_size=2, total_steps=4, rollout_slots=[4], n_teachers=1,
                      teacher_max_batch=4)
    cluster = FakeCluster(ctrl, random.Random(3))
    cluster.start()
    cluster.send(M.WorkerFailed(0.5, "teacher-0", "injected"))  # the run stops with generations in flight
    assert ctrl.done and not ctrl.ok
    point = ctrl.resume_point()
    unfinished = {a.prompt_id for a in ctrl.samples.values() if a.status == "unfinished"}
    assert unfinished and sorted(unfinished) == point["skipped_prompts"]
    assert point["version"] == 0 and point["next_prompt_id"] == ctrl.counters["prompts_admitted"] == 4
