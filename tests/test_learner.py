"""TorchLearner: forward KL on the teacher's top-k, micro-batching, versions, weight copies."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from asyncopd.backends.base import GenRequest, ScoreRequest, TeacherPayload, TrainItem
from asyncopd.backends.torch_backend import TorchLearner, TorchRolloutEngine, TorchTeacherScorer
from asyncopd.losses import dense_forward_kl_per_token

from tests.tiny_lm import PAD, VOCAB, one_thread, tiny_lm  # noqa: F401  (one_thread: autouse fixture)






def make_batch(k: int, n: int = 6, student_seed: int = 0, teacher_seed: int = 1) -> list[TrainItem]:
    rng = np.random.default_rng(3)
    reqs = [GenRequest(i, i, rng.integers(1, VOCAB, size=int(rng.integers(1, 6))).tolist()) for i in range(n)]
    engine = TorchRolloutEngine(tiny_lm(student_seed), eos_id=3, pad_id=PAD, max_new_tokens=8, seed=1)
    results = engine.generate(reqs)
    teacher = TorchTeacherScorer(tiny_lm(teacher_seed), top_k=k, pad_id=PAD)
    payloads = teacher.score([ScoreRequest(r.sample_id, r.prompt_ids, r.response_ids) for r in results])
    return [TrainItem(r.prompt_ids, r.response_ids, r.behaviour_logprobs, r.token_versions, p) for r, p in zip(results, payloads)]


@torch.no_grad()
def response_logits(model, item: TrainItem) -> torch.Tensor:
    x = torch.tensor([item.prompt_ids + item.response_ids])
    p, t = len(item.prompt_ids), len(item.response_ids)
    return model(input_ids=x).logits[0, p - 1 : p - 1 + t].float()


def grads(learner: TorchLearner) -> list[torch.Tensor]:
    return [p.grad.clone() for p in learner.model.parameters()]


def test_full_vocab_loss_equals_dense_forward_kl():
    batch = make_batch(k=VOCAB)
    student, teacher = tiny_lm(0), tiny_lm(1)
    learner = TorchLearner(copy.deepcopy(student), lr=1e-3, micro_batch_size=4)
    metrics = learner.train_step(batch)
    per_tok = torch.cat([dense_forward_kl_per_token(response_logits(student, it), response_logits(teacher, it)) for it in batch])
    assert metrics.tokens == per_tok.numel() == sum(len(it.response_ids) for it in batch)
    assert metrics.loss == pytest.approx(float(per_tok.mean()), abs=1e-5)
    assert metrics.extra["teacher_topk_mass"] == pytest.approx(1.0, abs=1e-5)
    assert metrics.extra["student_topk_mass"] == pytest.approx(1.0, abs=1e-5)
    # on-policy batch: the learner's log-probs of the sampled tokens are the behaviour log-probs
    assert metrics.extra["logprob_diff_abs"] < 1e-4
    assert metrics.extra["staleness_mean"] == 0.0


def test_loss_decreases_and_version_increments():
    batch = make_batch(k=8)
    learner = TorchLearner(tiny_lm(0), lr=1e-2, micro_batch_size=2, warmup_steps=2)
    losses = []
    for step in range(15):
        assert learner.version == step
        m = learner.train_step(batch)
        losses.append(m.loss)
        assert m.lr == pytest.approx(1e-2 * min(1.0, (step + 1) / 2))
        assert np.isfinite(m.grad_norm) and m.grad_norm > 0
    assert learner.version == 15
    assert losses[-1] < losses[0] - 0.05
    assert set(m.as_dict()) >= {"loss", "grad_norm", "lr", "tokens", "teacher_topk_mass", "staleness_max"}


def test_microbatching_gives_the_same_gradient_and_update():
    batch = make_batch(k=5, n=7)
    base = tiny_lm(0)
    learners = {mb: TorchLearner(copy.deepcopy(base), lr=1e-3, micro_batch_size=mb, grad_clip=0.0) for mb in (1, 3, 7)}
    ref_loss = None
    ref_grads = None
    for mb, learner in learners.items():
        loss, tokens, _, n_micro = learner.accumulate_gradients(batch)
        assert n_micro == -(-len(batch) // mb)
        g = grads(learner)
        if ref_grads is None:
            ref_loss, ref_grads = loss, g
        else:
            assert loss == pytest.approx(ref_loss, abs=1e-6)
            for a, b in zip(g, ref_grads):
                torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        learner.optimizer.zero_grad(set_to_none=True)
    # one full update (Adam, clipping on) leaves the same parameters whatever the micro-batch size
    metrics = {mb: learner.train_step(batch) for mb, learner in learners.items()}
    assert metrics[1].grad_norm == pytest.approx(metrics[7].grad_norm, rel=1e-5)
    for a, b in zip(learners[1].model.parameters(), learners[7].model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_grad_clip_reports_preclip_norm_and_clips():
    batch = make_batch(k=5)
    learner = TorchLearner(tiny_lm(0), lr=1e-3, micro_batch_size=8, grad_clip=1e-3)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.accumulate_gradients(batch)
    raw = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in learner.model.parameters()]))
    norm = learner._clip()
    assert norm == pytest.approx(float(raw), rel=1e-5)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in learner.model.parameters()]))
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)


def test_weights_for_sync_are_detached_copies():
    learner = TorchLearner(tiny_lm(0), lr=1e-3, micro_batch_size=2)
    weights = learner.weights_for_sync()
    assert set(weights) == set(learner.model.state_dict())
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    for t in weights.values():
        assert t.device.type == "cpu" and not t.requires_grad
        t.add_(1.0)
    for name, t in learner.model.state_dict().items():
        assert torch.equal(t, before[name])
    # and they load into a rollout-side model of the same architecture
    other = tiny_lm(5)
    other.load_state_dict(learner.weights_for_sync())
    for name, t in other.state_dict().items():
        assert torch.equal(t, before[name])


def test_checkpoint_round_trip_resumes_identically():
    batch = make_batch(k=4)
    a = TorchLearner(tiny_lm(0), lr=5e-3, micro_batch_size=3)
    a.train_step(batch)
    a.train_step(batch)
    state = copy.deepcopy(a.state_dict())
    b = TorchLearner(tiny_lm(9), lr=5e-3, micro_batch_size=3)
    b.load_state_dict(state)
    assert b.version == 2
    ma, mb = a.train_step(batch), b.train_step(batch)
    assert ma.loss == pytest.approx(mb.loss, abs=1e-7)
    for x, y in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(x, y)
    assert a.version == b.version == 3


def test_staleness_metrics_and_ragged_topk():
    batch = make_batch(k=5, n=3)
    learner = TorchLearner(tiny_lm(0), lr=1e-3, micro_batch_size=3)
    learner.version = 4
    batch[0].token_versions = [1] * len(batch[0].response_ids)
    batch[1].token_versions = [4] * len(batch[1].response_ids)
    # a payload with a smaller k: its missing columns contribute nothing
    pay = batch[2].teacher
    batch[2].teacher = TeacherPayload(pay.sample_id, pay.topk_ids[:, :2].copy(), pay.topk_logprobs[:, :2].copy(), pay.sampled_logprob)
    batch[2].token_versions = [2] * len(batch[2].response_ids)
    m = learner.train_step(batch)
    lens = [len(it.response_ids) for it in batch]
    expected = (3 * lens[0] + 0 * lens[1] + 2 * lens[2]) / sum(lens)
    assert m.extra["staleness_mean"] == pytest.approx(expected)
    assert m.extra["staleness_max"] == 3.0
    assert np.isfinite(m.loss)
    assert learner.version == 5


def test_mismatched_payload_is_rejected():
    batch = make_batch(k=3, n=2)
    it = batch[0]
    pay = it.teacher
    it.teacher = TeacherPayload(pay.sample_id, pay.topk_ids[:-1], pay.topk_logprobs[:-1], pay.sampled_logprob[:-1])
    learner = TorchLearner(tiny_lm(0), lr=1e-3, micro_batch_size=2)
    with pytest.raises(ValueError, match="teacher payload"):
        learner.train_step(batch)
    with pytest.raises(ValueError):
        learner.train_step([])


def batch_for(algo, k: int = 4, n: int = 5) -> list[TrainItem]:
    """Rollout + teacher asked for exactly what ``algo`` needs (as the trainer asks)."""
    rng = np.random.default_rng(5)
    reqs = [GenRequest(i, i, rng.integers(1, VOCAB, size=int(rng.integers(1, 6))).tolist()) for i in range(n)]
    engine = TorchRolloutEngine(tiny_lm(0), eos_id=3, pad_id=PAD, max_new_tokens=8, seed=1,
                                capture_top_k=algo.rollout_top_k(), capture_mc=algo.rollout_mc_samples())
    results = engine.generate(reqs)
    spec = algo.spec
    teacher = TorchTeacherScorer(tiny_lm(1), top_k=k, pad_id=PAD, num_samples=algo.teacher_samples(),
                                 full_vocab=spec.teacher_full)

    def query(r):
        if spec.teacher_query is None:
            return None
        return r.capture.topk_ids if spec.teacher_query == "rollout_topk" else r.capture.mc_ids

    payloads = teacher.score([ScoreRequest(r.sample_id, r.prompt_ids, r.response_ids, query(r)) for r in results])
    return [TrainItem(r.prompt_ids, r.response_ids, r.behaviour_logprobs, r.token_versions, p, r.capture)
            for r, p in zip(results, payloads)]


@pytest.mark.parametrize("overrides", [
    ["algorithm.loss=reverse_kl_topk"], ["algorithm.loss=reverse_kl_student_topk", "algorithm.student_top_k=3"],
    ["algorithm.loss=sampled_reverse_kl"], ["algorithm.loss=sampled_reverse_kl", "algorithm.advantage=offline",
                                             "algorithm.stabiliser=clip"],
    ["algorithm.loss=mc_reverse_kl", "algorithm.stabiliser=decoupled_ppo"],
    ["algorithm.loss=mc_reverse_kl", "algorithm.stabiliser=m2po"], ["algorithm.loss=mc_forward_kl"],
    ["algorithm.loss=dense_forward_kl"], ["algorithm.loss=dense_reverse_kl"]])
def test_every_estimator_trains_end_to_end_through_the_learner(overrides):
    from asyncopd.config import load_config

    algo = load_config(None, overrides).algorithm
    batch = batch_for(algo)
    learner = TorchLearner(tiny_lm(0), lr=1e-2, micro_batch_size=2, algorithm=algo)
    before = [p.detach().clone() for p in learner.model.parameters()]
    m = learner.train_step(batch)
    assert np.isfinite(m.loss) and np.isfinite(m.grad_norm) and m.grad_norm > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, learner.model.parameters()))
    if algo.spec.policy_gradient:
        assert 0.0 <= m.extra["kept_mean"] <= 1.0 and m.extra["ratio_mean"] > 0


def test_reverse_kl_topk_with_full_vocab_is_the_dense_reverse_kl_through_the_learner():
    from asyncopd.config import load_config
    from asyncopd.losses import dense_reverse_kl_per_token

    algo = load_config(None, ["algorithm.loss=reverse_kl_topk"]).algorithm
    batch = batch_for(algo, k=VOCAB)
    student, teacher = tiny_lm(0), tiny_lm(1)
    m = TorchLearner(copy.deepcopy(student), lr=1e-3, micro_batch_size=2, algorithm=algo).train_step(batch)
    ref = torch.cat([dense_reverse_kl_per_token(response_logits(student, it), response_logits(teacher, it)) for it in batch])
    assert m.loss == pytest.approx(float(ref.mean()), abs=1e-5)


def test_a_missing_capture_is_reported_with_the_sample():
    from asyncopd.config import load_config

    algo = load_config(None, ["algorithm.loss=mc_reverse_kl"]).algorithm
    batch = batch_for(algo)
    batch[1].capture = None
    with pytest.raises(ValueError, match="has no rollout capture"):
        TorchLearner(tiny_lm(0), lr=1e-2, micro_batch_size=2, algorithm=algo).train_step(batch)


def test_learning_rate_schedule_warmup_then_cosine_to_the_floor():
    ln = TorchLearner(tiny_lm(0), lr=1.0, micro_batch_size=1, warmup_steps=4, decay_steps=14, min_lr_ratio=0.1)
    assert [ln.lr_at(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert ln.lr_at(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert ln.lr_at(14) == pytest.approx(0.1) and ln.lr_at(100) == pytest.approx(0.1)
    flat = TorchLearner(tiny_lm(0), lr=1.0, micro_batch_size=1, warmup_steps=2)
    assert [flat.lr_at(s) for s in (0, 1, 50)] == pytest.approx([0.5, 1.0, 1.0])
