"""The data-parallel learner: N ranks (Ray actors in a gloo group) make the single-device update.

Spec (issue 13): three DP=2 updates equal three DP=1 updates on the same batches (float32, max
abs parameter difference <= 1e-5), for DDP and FSDP; a checkpoint written with N ranks resumes
with another N; the token-balanced split is a partition that keeps every rank busy.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.runtime.shards import split_by_tokens

# ----------------------------------------------------------------------------- the split (pure)


@given(st.lists(st.integers(0, 200), max_size=40), st.integers(1, 6))
@settings(max_examples=300, deadline=None)
def test_the_split_is_a_balanced_order_keeping_partition(tokens, ranks):
    shards = split_by_tokens(tokens, ranks)
    assert len(shards) == ranks
    assert sorted(i for s in shards for i in s) == list(range(len(tokens)))
    assert all(s == sorted(s) for s in shards)
    if len(tokens) >= ranks:
        assert all(shards), "a rank without samples while the batch has enough"
    loads = [sum(tokens[i] for i in s) for s in shards]
    if tokens:  # list scheduling bound: no shard exceeds the mean by more than the largest item
        assert max(loads) <= sum(tokens) / ranks + max(tokens) * (1 - 1 / ranks) + 1e-9


def test_the_split_balances_tokens_not_items():
    assert split_by_tokens([100, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    with pytest.raises(ValueError, match="ranks"):
        split_by_tokens([1], 0)


# ----------------------------------------------------------------------------- N ranks vs one device

torch = pytest.importorskip("torch")
OPTS = dict(device_type="cpu", lr=5e-3, weight_decay=0.01, grad_clip=1.0, micro_batch_size=2, warmup_steps=0,
            dtype="float32", sync_method="object_store")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    from tests.tiny_lm import tiny_lm

    path = tmp_path_factory.mktemp("dp") / "student"
    tiny_lm(0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batches():
    """Three batches of 7 scored samples (uneven: the ranks get different micro-batch counts)."""
    from tests.test_learner import make_batch

    return [make_batch(k=4, n=7, student_seed=s, teacher_seed=10 + s) for s in range(3)]


def learner(student_dir, ranks: int, strategy: str = "ddp"):
    import ray

    from asyncopd.runtime.learner_actor import LearnerWorker
    from asyncopd.runtime.learner_group import LearnerGroup

    actor = ray.remote(LearnerWorker).options(num_cpus=0)
    group = LearnerGroup([actor.remote(str(student_dir), devices=[r % 2], rank=r, world=ranks, strategy=strategy,
                                       **OPTS) for r in range(ranks)])
    group.form("gloo", 60)
    return group


def weights(group) -> dict:
    import ray

    return ray.get(ray.get(group.call("publish"))["holder"][0])


def train(group, batches, first_step: int = 0) -> list[dict]:
    import ray

    return [ray.get(group.train(first_step + i, b))[0] for i, b in enumerate(batches)]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(ray_session, student_dir, batches):
    """The reference: one rank, three updates."""
    import ray

    group = learner(student_dir, 1)
    metrics = train(group, batches)
    out = {"metrics": metrics, "weights": weights(group)}
    for r in group.ranks:
        ray.kill(r)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_make_the_single_device_updates(single, student_dir, batches, strategy):
    import ray

    group = learner(student_dir, 2, strategy)
    try:
        metrics = train(group, batches)
        assert max_diff(weights(group), single["weights"]) <= 1e-5
        for m, ref in zip(metrics, single["metrics"]):
            assert m["tokens"] == ref["tokens"] and m["samples"] == ref["samples"]
            for key in set(ref) - {"step_seconds", "micro_batches", "cpu_s"}:  # loss, norms, token means: the batch's
                assert m[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-7), key
    finally:
        for r in group.ranks:
            ray.kill(r)


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [((2, "fsdp"), (1, "ddp")), ((1, "ddp"), (2, "ddp"))])
def test_a_checkpoint_resumes_with_another_number_of_ranks(single, student_dir, batches, tmp_path, before, after):
    """Two updates with N ranks, checkpoint, the third with M ranks: the three-update weights."""
    import ray

    first = learner(student_dir, *before)
    train(first, batches[:2])
    ray.get(first.call("write_checkpoint", str(tmp_path / "ck"), str(student_dir)))
    for r in first.ranks:
        ray.kill(r)
    second = learner(student_dir, *after)
    try:
        version, _ = ray.get(second.call("load_checkpoint", str(tmp_path / "ck")))
        assert version == 2
        train(second, batches[2:], first_step=2)
        assert max_diff(weights(second), single["weights"]) <= 1e-5
    finally:
        for r in second.ranks:
            ray.kill(r)


def test_a_rank_without_samples_still_takes_part(ray_session, student_dir, batches):
    """Fewer samples than ranks: the empty rank contributes a zero gradient, the update is the batch's."""
    import ray

    one, two = learner(student_dir, 1), learner(student_dir, 2)
    try:
        tiny = batches[0][:1]
        a, b = ray.get(one.train(0, tiny))[0], ray.get(two.train(0, tiny))[0]
        assert b["tokens"] == a["tokens"] and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert max_diff(weights(two), weights(one)) <= 1e-5
    finally:
        for r in [*one.ranks, *two.ranks]:
            ray.kill(r)

