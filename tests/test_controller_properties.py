"""Property tests of the scheduling controller over random event orders (hypothesis)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncopd.control.controller import Controller
from asyncopd.control.policies import FullyAsyncPolicy, SyncPolicy
from asyncopd.control.staleness import merged_with_totals, staleness_of
from tests.controller_harness import FakeCluster, registered_policies

policies = registered_policies()  # every registered policy, its parameters drawn from their declarations

setups = st.fixed_dictionaries({
    "policy": policies,
    "batch_size": st.integers(1, 5),
    "total_steps": st.integers(1, 6),
    "rollout_slots": st.lists(st.integers(1, 4), min_size=1, max_size=3),
    "n_teachers": st.integers(1, 2),
    "teacher_max_batch": st.integers(1, 4),
    "teacher_min_batch": st.integers(1, 4),
    "pause_mode": st.sampled_from(["keep", "abort", "recompute"]),
})


def run(setup: dict, seed: int, fail_prob: float = 0.0, **faults: float) -> FakeCluster:
    setup = {**setup, "teacher_min_batch": min(setup.pop("teacher_min_batch", 1), setup["teacher_max_batch"])}
    ctrl = Controller(**setup)
    cluster = FakeCluster(ctrl, random.Random(seed), fail_prob=fail_prob, **faults)
    cluster.start()
    while cluster.step():
        assert cluster.events < 20_000, "run did not terminate"
    return cluster


def attempts_by_prompt(ctrl: Controller) -> dict[int, list]:
    out = defaultdict(list)
    for a in sorted(ctrl.samples.values(), key=lambda a: a.sample_id):
        out[a.prompt_id].append(a)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31))
def test_run_completes_and_every_prompt_is_accounted_for(setup: dict, seed: int) -> None:
    cluster = run(setup, seed)
    ctrl = cluster.ctrl
    # Never deadlocks: without failures, the run always reaches its last learner step.
    assert ctrl.done and ctrl.ok, ctrl.stop_reason
    assert ctrl.version == setup["total_steps"]
    assert len(cluster.stops) == 1
    consumed_prompts = [a.prompt_id for a in ctrl.samples.values() if a.status == "consumed"]
    assert len(consumed_prompts) == len(set(consumed_prompts)), "a prompt was consumed twice"
    assert len(consumed_prompts) == setup["batch_size"] * setup["total_steps"]
    for prompt, attempts in attempts_by_prompt(ctrl).items():
        statuses = [a.status for a in attempts]
        # Each attempt but the last was aborted and re-queued; the last one is terminal.
        assert all(s == "aborted" for s in statuses[:-1]), (prompt, statuses)
        assert statuses[-1] in ("consumed", "evicted", "unfinished"), (prompt, statuses)
        assert [a.attempt for a in attempts] == list(range(len(attempts)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31))
def test_consumed_staleness_within_policy_bound(setup: dict, seed: int) -> None:
    ctrl = run(setup, seed).ctrl
    bound = setup["policy"].staleness_bound
    for a in ctrl.samples.values():
        if a.status != "consumed":
            continue
        assert a.staleness.min >= 0, "consumed a token from the future"
        assert a.staleness.min <= a.staleness.mean <= a.staleness.max
        if bound is not None:
            assert a.staleness.max <= bound, (setup["policy"], a)
    if isinstance(setup["policy"], SyncPolicy):
        assert all(a.staleness.max == 0 for a in ctrl.samples.values() if a.status == "consumed")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31))
def test_worker_failures_never_deadlock_or_lose_prompts(setup: dict, seed: int) -> None:
    cluster = run(setup, seed, fail_prob=0.05)
    ctrl = cluster.ctrl
    assert ctrl.done, "run neither completed nor stopped"
    if not ctrl.ok:
        assert "failed" in ctrl.stop_reason
    consumed = [a.prompt_id for a in ctrl.samples.values() if a.status == "consumed"]
    assert len(consumed) == len(set(consumed))
    for prompt, attempts in attempts_by_prompt(ctrl).items():
        assert all(a.status == "aborted" for a in attempts[:-1])
        if attempts[-1].status == "aborted":  # re-queued, then the run stopped on a failure
            assert not ctrl.ok and prompt in ctrl.requeued_prompts
        else:
            assert attempts[-1].status in ("consumed", "evicted", "unfinished")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31))
def test_restarted_workers_let_the_run_complete_with_every_prompt_once(setup: dict, seed: int) -> None:
    """Workers die often and always come back: the run completes, no prompt is consumed twice
    or lost, and a restarted rollout worker never generates before it is synced (harness)."""
    cluster = run(setup, seed, fail_prob=0.05, restart_prob=1.0)
    ctrl = cluster.ctrl
    assert ctrl.done and ctrl.ok, ctrl.stop_reason
    consumed = [a.prompt_id for a in ctrl.samples.values() if a.status == "consumed"]
    assert sorted(consumed) == sorted(set(consumed))
    assert len(consumed) == setup["batch_size"] * setup["total_steps"]
    c = ctrl.counters
    failed = c["failed_rollout"] + c["failed_teacher"]
    assert c["restarted_rollout"] + c["restarted_teacher"] <= failed
    assert c["redone_generations"] == sum(1 for a in ctrl.samples.values() if a.end_reason == "worker_failed")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31))
def test_failed_restarts_stop_the_run_cleanly(setup: dict, seed: int) -> None:
    """Some restarts fail: the run either completes or stops naming the role left without workers."""
    cluster = run(setup, seed, fail_prob=0.08, restart_prob=0.7, restart_fail_prob=0.3)
    ctrl = cluster.ctrl
    assert ctrl.done
    if not ctrl.ok:
        assert "workers failed" in ctrl.stop_reason, ctrl.stop_reason
    consumed = [a.prompt_id for a in ctrl.samples.values() if a.status == "consumed"]
    assert len(consumed) == len(set(consumed))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(eta=st.integers(0, 3), batch=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_fully_async_admission_window(eta: int, batch: int, seed: int) -> None:
    """AReaL's rule: admitted (net) <= (eta + version + 1) * B, so live samples never exceed (eta + 1) * B."""
    ctrl = Controller(policy=FullyAsyncPolicy(eta=eta), batch_size=batch, total_steps=4, rollout_slots=[8, 8],
                      n_teachers=1, teacher_max_batch=3, pause_mode="abort")
    cluster = FakeCluster(ctrl, random.Random(seed))
    cluster.start()
    while cluster.step():
        live = ctrl.queue_depths()["live"]
        assert live <= (eta + 1) * batch
        assert live + ctrl.counters["consumed"] <= (eta + ctrl.version + 1) * batch
    assert ctrl.ok


def test_sync_scores_only_whole_batches() -> None:
    ctrl = Controller(policy=SyncPolicy(), batch_size=4, total_steps=2, rollout_slots=[2],
                      n_teachers=1, teacher_max_batch=8)
    cluster = FakeCluster(ctrl, random.Random(0))
    cluster.start()
    while cluster.step():
        for kind, payload, _ in cluster.pending:
            if kind == "score":
                assert len(payload.sample_ids) == 4
    assert ctrl.ok


def test_controller_imports_no_heavy_frameworks() -> None:
    code = ("import sys, asyncopd.control, asyncopd.config, asyncopd.trace.recorder; "
            "bad = [m for m in ('torch', 'ray', 'simpy') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=setups, seed=st.integers(0, 2**31), after=st.integers(0, 60))
def test_stop_requested_ends_at_an_update_boundary(setup: dict, seed: int, after: int) -> None:
    """A stop request (a wall-clock budget) at any moment: no update starts after it, the one
    in flight finishes and is recorded, and the run stops ok with every sample accounted for."""
    from asyncopd.control import messages as M

    setup = {**setup, "teacher_min_batch": min(setup.pop("teacher_min_batch", 1), setup["teacher_max_batch"])}
    ctrl = Controller(**setup)
    cluster = FakeCluster(ctrl, random.Random(seed))
    cluster.start()
    for _ in range(after):
        if not cluster.step():
            break
    if ctrl.done:
        return
    issued, busy = ctrl.steps_issued, ctrl.learner_busy
    cluster.send(M.StopRequested(cluster.t, "budget"))
    while cluster.step():
        pass
    assert ctrl.done and ctrl.ok
    assert ctrl.stop_reason == ("completed all learner steps" if ctrl.version == setup["total_steps"]
                                else "stopped on request: budget")
    assert ctrl.steps_issued == issued and ctrl.version == issued  # nothing new; the one in flight landed
    assert busy or ctrl.version == issued
    assert all(a.status in ("consumed", "evicted", "aborted", "unfinished") for a in ctrl.samples.values())


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(-2, 5)), max_size=8), st.integers(0, 12))
@settings(max_examples=300, deadline=None)
def test_merged_spans_and_staleness_match_token_by_token(spans: list[tuple[int, int]], step: int) -> None:
    """``merged_with_totals`` and ``staleness_of``
    against the definition, token by token: each token's staleness is ``step - version``."""
    tokens = [v for v, n in spans for _ in range(max(n, 0))]  # the version of every token, in order
    merged, totals = merged_with_totals(tuple(spans))
    assert [v for v, n in merged for _ in range(n)] == tokens
    assert all(n > 0 for _, n in merged) and all(a[0] != b[0] for a, b in zip(merged, merged[1:]))
    st_ = staleness_of(totals, step, start_version=3)
    if not tokens:
        assert (st_.mean, st_.max, st_.min) == (step - 3, step - 3, step - 3)
        return
    exact = [step - v for v in tokens]
    assert abs(st_.mean - sum(exact) / len(exact)) < 1e-12
    assert (st_.max, st_.min) == (max(exact), min(exact))
