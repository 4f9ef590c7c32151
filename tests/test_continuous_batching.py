"""TorchRolloutEngine.serve: continuous batching (rows join and leave a running batch)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from asyncopd.backends.base import GenRequest, RequestList
from asyncopd.backends.torch_backend import compat
from asyncopd.backends.torch_backend.decode_batch import DecodeBatch

from tests.test_rollout_engine import Hook, _update, make_engine, requests, teacher_forced_logprobs
from tests.tiny_lm import one_thread, tiny_lm  # noqa: F401  (one_thread: autouse fixture)


class Queue(RequestList):
    """``RequestList`` that records every take."""

    def __init__(self, reqs: list[GenRequest]) -> None:
        super().__init__(reqs)
        self.takes: list[tuple[int, bool, int]] = []

    def take(self, most: int, wait: bool):
        out = super().take(most, wait)
        if out is not None:
            self.takes.append((most, wait, len(out)))
        return out


def serve(engine, reqs, slots, min_join=1, hook=None):
    got, src = [], Queue(reqs)
    engine.serve(src, got.extend, hook, slots=slots, min_join=min_join)
    return {r.sample_id: r for r in got}, src


def many(n=14):
    return requests(tuple(2 + (7 * i) % 9 for i in range(n)))


def test_rows_join_a_running_batch_and_follow_the_model_exactly():
    """Sequences that join mid-flight (left-padded into a longer cache, leading columns trimmed
    as rows leave) sample from exactly the distribution a lone forward pass gives."""
    model = tiny_lm(0)
    reqs = many()
    engine = make_engine(model, eos_id=5, max_new_tokens=16, seed=3)
    out, src = serve(engine, reqs, slots=4)
    assert sorted(out) == sorted(r.sample_id for r in reqs)
    joins = [t for t in src.takes if not t[1] and t[2] > 0]
    assert joins, "no request joined a running batch"
    assert {r.finish_reason for r in out.values()} == {"eos", "length"}
    for r in out.values():
        assert r.status == "finished" and r.started_at <= r.finished_at
        np.testing.assert_allclose(r.behaviour_logprobs, teacher_forced_logprobs(model, r.prompt_ids, r.response_ids),
                                   atol=1e-4)
    assert engine.last_stats["generated_tokens"] == sum(len(r.response_ids) for r in out.values())
    # continuous batching needs fewer decode steps than waves of the same width
    waves = make_engine(model, eos_id=5, max_new_tokens=16, seed=3)
    steps = 0
    for k in range(0, len(reqs), 4):
        waves.generate(reqs[k:k + 4])
        steps += waves.last_stats["decode_steps"]
    assert engine.last_stats["decode_steps"] < steps


def test_greedy_continuous_equals_each_request_alone():
    model = tiny_lm(2)
    reqs = many(10)
    engine = make_engine(model, eos_id=7, max_new_tokens=10, temperature=0.0)
    out, _ = serve(engine, reqs, slots=3)
    for q in reqs:
        alone = make_engine(model, eos_id=7, max_new_tokens=10, temperature=0.0).generate([q])[0]
        assert out[q.sample_id].response_ids == alone.response_ids


def test_min_join_waits_for_enough_free_slots():
    """Requests join a running batch in groups: only once ``min_join`` slots are free."""
    model = tiny_lm(0)
    engine = make_engine(model, eos_id=5, max_new_tokens=16, seed=3)
    out, src = serve(engine, many(), slots=4, min_join=3)
    assert len(out) == 14
    joins = [t for t in src.takes if not t[1]]
    assert joins and all(most >= 3 for most, _, _ in joins)
    assert all(n >= 3 for _, _, n in joins[:-1])  # (the last one takes what is left)
    one, src1 = serve(make_engine(model, eos_id=5, max_new_tokens=16, seed=3), many(), slots=4, min_join=1)
    assert len(one) == 14
    assert sum(n > 0 for _, _, n in src.takes) < sum(n > 0 for _, _, n in src1.takes)  # fewer prefills


def test_a_weight_update_applies_to_rows_in_flight_and_to_later_joins():
    model = tiny_lm(5)
    engine = make_engine(model, max_new_tokens=6, seed=1)
    update, new = _update(6, 1, "keep")
    out, _ = serve(engine, many(8), slots=3, hook=Hook(update, at=4))
    versions = [r.token_versions for r in out.values()]
    assert any(v[0] == 0 and v[-1] == 1 for v in versions)  # in flight across the update
    late = [r for r in out.values() if r.token_versions[0] == 1]
    assert late, "no request started after the update"
    for r in late:  # joined after the update: the new weights throughout
        np.testing.assert_allclose(r.behaviour_logprobs, teacher_forced_logprobs(new, r.prompt_ids, r.response_ids),
                                   atol=1e-4)


def test_eviction_and_abort_while_serving():
    model = tiny_lm(0)
    reqs = many(8)
    engine = make_engine(model, max_new_tokens=8, seed=2)
    out, _ = serve(engine, reqs, slots=3, hook=Hook(None, evict={reqs[1].sample_id}, evict_at=2))
    assert out[reqs[1].sample_id].abort_reason == "evict" and len(out[reqs[1].sample_id].response_ids) == 2
    assert all(r.status == "finished" for k, r in out.items() if k != reqs[1].sample_id)
    update, _ = _update(9, 1, "abort")
    out, _ = serve(make_engine(model, max_new_tokens=8, seed=2), reqs, slots=3, hook=Hook(update, at=3))
    aborted = [r for r in out.values() if r.status == "aborted"]
    assert len(aborted) == 3 and all(r.abort_reason == "sync_abort" and len(r.response_ids) == 3 for r in aborted)
    assert all(r.token_versions == [1] * len(r.response_ids) for r in out.values() if r.status == "finished")


def test_caches_that_cannot_take_rows_fall_back_to_waves(monkeypatch):
    model = tiny_lm(0)
    monkeypatch.setattr(compat, "editable_layers", lambda cache: None)
    engine = make_engine(model, eos_id=5, max_new_tokens=16, seed=3)
    out, _ = serve(engine, many(9), slots=4)
    assert len(out) == 9
    for r in out.values():
        np.testing.assert_allclose(r.behaviour_logprobs, teacher_forced_logprobs(model, r.prompt_ids, r.response_ids),
                                   atol=1e-4)


def test_trim_keeps_the_attention_width_to_the_longest_live_context():
    model = tiny_lm(0)
    engine = make_engine(model, eos_id=5, max_new_tokens=16, seed=3)
    widths = []
    step = DecodeBatch.step

    def recording(self, tok):
        step(self, tok)
        live = [len(q.req.prompt_ids) + len(q.response) for q in self.seqs]
        widths.append((self.mask.shape[1], max(live)))

    try:
        DecodeBatch.step = recording
        serve(engine, many(30), slots=4)
    finally:
        DecodeBatch.step = step
    assert len(widths) > 60
    assert all(w <= longest + 1 for w, longest in widths)


def test_an_idle_engine_waits_for_work_and_stops_when_closed():
    """The blocking take a rollout actor's thread makes: requests arriving later are served."""
    model = tiny_lm(0)
    engine = make_engine(model, eos_id=5, max_new_tokens=8, seed=3)
    cond, queue, state = threading.Condition(), [], {"closed": False}

    class Live:
        def take(self, most, wait):
            with cond:
                while wait and not queue and not state["closed"]:
                    cond.wait()
                if not queue and state["closed"]:
                    return None
                out = queue[:most]
                del queue[:most]
                return out

    got = []
    t = threading.Thread(target=engine.serve, args=(Live(), got.extend), kwargs={"slots": 2})
    t.start()
    later = [GenRequest(200 + r.sample_id, r.prompt_id, r.prompt_ids) for r in requests((4, 5))]
    for batch, total in ((many(3), 3), (later, 5)):
        with cond:
            queue.extend(batch)
            cond.notify_all()
        while len(got) < total:  # the engine sits idle in take() between the two
            t.join(0.01)
    with cond:
        state["closed"] = True
        cond.notify_all()
    t.join(10)
    assert not t.is_alive() and len(got) == 5


def test_serve_rejects_bad_slots():
    with pytest.raises(ValueError, match="slots"):
        make_engine(tiny_lm(0)).serve(Queue([]), print, slots=0)
