"""TorchTeacherScorer: one batched prefill, top-k payload per response position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncopd.backends.base import ScoreRequest as R
from asyncopd.backends.torch_backend import TorchTeacherScorer

from tests.tiny_lm import PAD, VOCAB, one_thread, tiny_lm  # noqa: F401  (one_thread: autouse fixture)






def items():
    rng = np.random.default_rng(7)
    shapes = [(1, 5), (6, 2), (3, 9), (4, 1), (2, 4)]
    return [R(10 + i, rng.integers(1, VOCAB, p).tolist(), rng.integers(1, VOCAB, t).tolist()) for i, (p, t) in enumerate(shapes)]


@torch.no_grad()
def full_logprobs(model, prompt, response) -> torch.Tensor:
    x = torch.tensor([prompt + response])
    lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
    return lp[len(prompt) - 1 : len(prompt) - 1 + len(response)]


@pytest.mark.parametrize("k", [1, 5, VOCAB])
def test_topk_matches_full_forward(k):
    model = tiny_lm(0)
    scorer = TorchTeacherScorer(model, top_k=k, pad_id=PAD)
    its = items()
    payloads = scorer.score(its)
    assert [p.sample_id for p in payloads] == [it.sample_id for it in its]
    for it, pay in zip(its, payloads):
        response = it.response_ids
        lp = full_logprobs(model, it.prompt_ids, response)
        ref_lp, ref_ids = torch.topk(lp, k, dim=-1)
        t = len(response)
        assert pay.topk_ids.shape == (t, k) and pay.topk_ids.dtype == np.int32
        assert pay.topk_logprobs.shape == (t, k) and pay.topk_logprobs.dtype == np.float32
        assert pay.sampled_logprob.shape == (t,) and pay.sampled_logprob.dtype == np.float32
        np.testing.assert_allclose(pay.topk_logprobs, ref_lp.numpy(), atol=1e-5)
        # ids agree wherever the log-probs are not (numerically) tied
        np.testing.assert_allclose(lp.numpy()[np.arange(t)[:, None], pay.topk_ids], ref_lp.numpy(), atol=1e-5)
        assert np.all(np.diff(pay.topk_logprobs, axis=1) <= 0)
        np.testing.assert_allclose(pay.sampled_logprob, lp[torch.arange(t), torch.tensor(response)].numpy(), atol=1e-5)
        assert pay.nbytes == t * k * 8 + t * 4
    if k == VOCAB:  # the full payload is a permutation of the distribution
        for pay in payloads:
            np.testing.assert_allclose(np.exp(pay.topk_logprobs).sum(-1), 1.0, atol=1e-5)


def test_batch_equals_items_scored_alone():
    scorer = TorchTeacherScorer(tiny_lm(1), top_k=6, pad_id=PAD)
    its = items()
    together = scorer.score(its)
    for item, pay in zip(its, together):
        alone = scorer.score([item])[0]
        np.testing.assert_array_equal(pay.topk_ids, alone.topk_ids)
        np.testing.assert_allclose(pay.topk_logprobs, alone.topk_logprobs, atol=1e-5)
        np.testing.assert_allclose(pay.sampled_logprob, alone.sampled_logprob, atol=1e-5)


def test_empty_response_and_validation():
    scorer = TorchTeacherScorer(tiny_lm(0), top_k=3, pad_id=PAD)
    out = scorer.score([R(1, [4, 5], []), R(2, [4], [6, 7])])
    assert out[0].topk_ids.shape == (0, 3) and out[0].sampled_logprob.shape == (0,)
    assert out[1].topk_ids.shape == (2, 3)
    assert scorer.score([]) == []
    with pytest.raises(ValueError, match="top_k"):
        TorchTeacherScorer(tiny_lm(0), top_k=VOCAB + 1, pad_id=PAD)
    with pytest.raises(ValueError):
        TorchTeacherScorer(tiny_lm(0), top_k=0, pad_id=PAD)
    with pytest.raises(ValueError, match="empty prompt"):
        scorer.score([R(3, [], [1])])
    with pytest.raises(ValueError, match="query_ids must be"):
        scorer.score([R(4, [1], [2, 3], query_ids=np.zeros((3, 2), dtype=np.int32))])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        scorer.score([R(4, [1], [2, 3], query_ids=np.full((2, 2), VOCAB, dtype=np.int32))])


def test_payload_extras_queries_teacher_draws_and_full_rows():
    """Query log-probs are the full distribution at the asked ids; teacher draws follow p_T
    (fixed seed, many draws: empirical frequencies within 0.02 of p_T); full rows are p_T."""
    model = tiny_lm(0)
    scorer = TorchTeacherScorer(model, top_k=3, pad_id=PAD, num_samples=4000, full_vocab=True, seed=1)
    rng = np.random.default_rng(0)
    it = R(1, [3, 4, 5], [6, 7], query_ids=rng.integers(0, VOCAB, (2, 5)).astype(np.int32))
    (pay,) = scorer.score([it])
    lp = full_logprobs(model, it.prompt_ids, it.response_ids).numpy()
    np.testing.assert_allclose(pay.query_logprobs, np.take_along_axis(lp, it.query_ids, 1), atol=1e-5)
    np.testing.assert_array_equal(pay.query_ids, it.query_ids)
    np.testing.assert_allclose(pay.full_logprobs, lp, atol=1e-5)
    assert pay.sample_ids.shape == (2, 4000)
    np.testing.assert_allclose(pay.sample_logprobs, np.take_along_axis(lp, pay.sample_ids, 1), atol=1e-5)
    for t in range(2):
        freq = np.bincount(pay.sample_ids[t], minlength=VOCAB) / 4000
        assert np.abs(freq - np.exp(lp[t])).max() < 0.02
    assert pay.nbytes == 2 * 3 * 8 + 2 * 4 + 2 * 5 * 8 + 2 * 4000 * 8 + 2 * VOCAB * 4
    empty = scorer.score([R(2, [1], [], query_ids=np.zeros((0, 5), dtype=np.int32))])[0]
    assert empty.query_logprobs.shape == (0, 5) and empty.sample_ids.shape == (0, 4000)
