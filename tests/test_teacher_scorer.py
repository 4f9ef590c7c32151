"""TorchTeacherScorer: one batched prefill, top-k payload per response position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asyncopd.backends.torch_backend import TorchTeacherScorer

from tests.tiny_lm import PAD, VOCAB, one_thread, tiny_lm  # noqa: F401  (one_thread: autouse fixture)






def items():
    rng = np.random.default_rng(7)
    shapes = [(1, 5), (6, 2), (3, 9), (4, 1), (2, 4)]
    return [(10 + i, rng.integers(1, VOCAB, p).tolist(), rng.integers(1, VOCAB, t).tolist()) for i, (p, t) in enumerate(shapes)]


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
    assert [p.sample_id for p in payloads] == [sid for sid, _, _ in its]
    for (sid, prompt, response), pay in zip(its, payloads):
        lp = full_logprobs(model, prompt, response)
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
    out = scorer.score([(1, [4, 5], []), (2, [4], [6, 7])])
    assert out[0].topk_ids.shape == (0, 3) and out[0].sampled_logprob.shape == (0,)
    assert out[1].topk_ids.shape == (2, 3)
    assert scorer.score([]) == []
    with pytest.raises(ValueError, match="top_k"):
        TorchTeacherScorer(tiny_lm(0), top_k=VOCAB + 1, pad_id=PAD)
    with pytest.raises(ValueError):
        TorchTeacherScorer(tiny_lm(0), top_k=0, pad_id=PAD)
    with pytest.raises(ValueError, match="empty prompt"):
        scorer.score([(3, [], [1])])
