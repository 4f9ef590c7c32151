"""Forward KL on the teacher's top-k vs the exact full-vocabulary KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.losses import (
    dense_forward_kl,
    dense_forward_kl_per_token,
    dense_reverse_kl,
    dense_reverse_kl_per_token,
    forward_kl_topk,
    forward_kl_topk_per_token,
    gather_logprobs,
    masked_token_mean,
    topk_mass,
)


def _random_case(seed: int, b: int = 3, t: int = 5, v: int = 11, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    teacher = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True  # at least one valid position
    return student, teacher, mask


def _topk_inputs(student_logits, teacher_logits, k):
    t_logp = torch.log_softmax(teacher_logits, -1)
    t_top, t_ids = torch.topk(t_logp, k, dim=-1)
    s_top = gather_logprobs(student_logits, t_ids)
    return s_top, t_top, t_ids


def test_gather_logprobs_shapes_and_values():
    logits = torch.randn(2, 3, 7)
    ids = torch.tensor([[[0, 6], [1, 2], [3, 3]], [[5, 4], [0, 0], [6, 1]]])
    full = torch.log_softmax(logits, -1)
    got = gather_logprobs(logits, ids)
    assert got.shape == (2, 3, 2)
    assert torch.allclose(got, full.gather(-1, ids))
    one = gather_logprobs(logits, ids[..., 0])
    assert one.shape == (2, 3)
    assert torch.allclose(one, full.gather(-1, ids[..., :1]).squeeze(-1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_with_full_vocab_equals_dense_forward_kl(seed):
    student, teacher, mask = _random_case(seed)
    v = student.shape[-1]
    s_top, t_top, _ = _topk_inputs(student, teacher, v)
    got = forward_kl_topk(s_top, t_top, mask)
    ref = dense_forward_kl(student, teacher, mask)
    assert torch.allclose(got, ref, atol=1e-10, rtol=1e-10)
    # and against a direct numpy computation of the masked token mean
    p = torch.softmax(teacher, -1).numpy()
    q = torch.softmax(student, -1).numpy()
    per_tok = (p * (np.log(p) - np.log(q))).sum(-1)
    m = mask.numpy()
    assert np.isclose(float(ref), per_tok[m].sum() / m.sum(), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
def test_topk_gradient_equals_dense_gradient_when_k_is_vocab(seed):
    student, teacher, mask = _random_case(seed)
    v = student.shape[-1]
    s1 = student.clone().requires_grad_(True)
    s_top, t_top, _ = _topk_inputs(s1, teacher, v)
    forward_kl_topk(s_top, t_top, mask).backward()
    s2 = student.clone().requires_grad_(True)
    dense_forward_kl(s2, teacher, mask).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-10)
    # closed form: (softmax(z) - p_T) / n_valid at valid positions, 0 elsewhere
    closed = (torch.softmax(student, -1) - torch.softmax(teacher, -1)) * mask[..., None] / mask.sum()
    assert torch.allclose(s1.grad, closed, atol=1e-10)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_truncated_topk_is_dense_sum_restricted_to_teacher_topk(k):
    student, teacher, mask = _random_case(7, v=13)
    s_top, t_top, t_ids = _topk_inputs(student, teacher, k)
    per_tok = forward_kl_topk_per_token(s_top, t_top)
    # elementwise dense terms p_T(v) (log p_T(v) - log pi(v)), summed over S_T only
    lt = torch.log_softmax(teacher, -1)
    ls = torch.log_softmax(student, -1)
    terms = lt.exp() * (lt - ls)
    in_topk = torch.zeros_like(terms, dtype=torch.bool).scatter_(-1, t_ids, True)
    restricted = torch.where(in_topk, terms, torch.zeros_like(terms)).sum(-1)
    assert torch.allclose(per_tok, restricted, atol=1e-12)
    # the dropped tail is exactly the difference to the dense KL
    tail = torch.where(in_topk, torch.zeros_like(terms), terms).sum(-1)
    assert torch.allclose(per_tok + tail, dense_forward_kl_per_token(student, teacher), atol=1e-12)
    # log-sum inequality: l_t >= m log(m / pi(S_T)), m = teacher mass on S_T, pi(S_T) = student mass on it
    m = t_top.exp().sum(-1)
    s_mass = s_top.exp().sum(-1)
    assert torch.all(per_tok >= m * torch.log(m / s_mass) - 1e-12)


def test_truncated_gradient_closed_form():
    student, teacher, mask = _random_case(11, v=9)
    k = 4
    s = student.clone().requires_grad_(True)
    s_top, t_top, t_ids = _topk_inputs(s, teacher, k)
    forward_kl_topk(s_top, t_top, mask).backward()
    p_topk = torch.zeros_like(student).scatter_(-1, t_ids, t_top.exp())
    m = p_topk.sum(-1, keepdim=True)
    closed = (m * torch.softmax(student, -1) - p_topk) * mask[..., None] / mask.sum()
    assert torch.allclose(s.grad, closed, atol=1e-10)


def test_dense_reverse_kl_matches_numpy():
    student, teacher, mask = _random_case(5, v=17)
    got = dense_reverse_kl(student, teacher, mask)
    q = torch.softmax(student, -1).numpy()
    p = torch.softmax(teacher, -1).numpy()
    per_tok = (q * (np.log(q) - np.log(p))).sum(-1)
    m = mask.numpy()
    assert np.isclose(float(got), per_tok[m].sum() / m.sum(), atol=1e-10)
    assert torch.all(dense_reverse_kl_per_token(student, teacher) >= -1e-12)
    assert torch.allclose(dense_reverse_kl_per_token(student, student), torch.zeros(student.shape[:-1], dtype=student.dtype), atol=1e-12)


def test_zero_probability_and_padding_do_not_produce_nan():
    student, teacher, mask = _random_case(2, v=6)
    s_top, t_top, _ = _topk_inputs(student, teacher, 3)
    # ragged k: a -inf teacher log-prob (p_T = 0) contributes nothing
    s_pad = torch.cat([s_top, torch.zeros_like(s_top[..., :1])], -1)
    t_pad = torch.cat([t_top, torch.full_like(t_top[..., :1], float("-inf"))], -1)
    assert torch.allclose(forward_kl_topk(s_pad, t_pad, mask), forward_kl_topk(s_top, t_top, mask))
    # garbage at masked-out positions does not leak into the value or the gradient
    s_bad = s_top.clone()
    s_bad[~mask] = float("nan")
    s_bad.requires_grad_(True)
    loss = forward_kl_topk(s_bad, t_top, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_bad.grad).all()
    assert torch.allclose(loss.detach(), forward_kl_topk(s_top, t_top, mask))
    # a teacher with -inf logits (masked vocabulary) in the dense reference
    teacher_masked = teacher.clone()
    teacher_masked[..., 0] = float("-inf")
    assert torch.isfinite(dense_forward_kl(student, teacher_masked, mask))


def test_normalizer_and_helpers():
    student, teacher, mask = _random_case(4)
    s_top, t_top, _ = _topk_inputs(student, teacher, 4)
    n = int(mask.sum())
    total = forward_kl_topk(s_top, t_top, mask, normalizer=1.0)
    assert torch.allclose(total / n, forward_kl_topk(s_top, t_top, mask))
    assert masked_token_mean(torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool)) == 0
    full = topk_mass(torch.log_softmax(teacher, -1), mask)
    assert torch.allclose(full, torch.tensor(1.0, dtype=full.dtype))
    assert 0 < float(topk_mass(t_top, mask)) < 1


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    v=st.integers(2, 12),
    t=st.integers(1, 6),
    scale=st.floats(0.1, 5.0),
)
def test_property_full_k_equals_dense(seed, v, t, scale):
    student, teacher, mask = _random_case(seed, b=2, t=t, v=v, scale=scale)
    s_top, t_top, _ = _topk_inputs(student, teacher, v)
    assert torch.allclose(forward_kl_topk(s_top, t_top, mask), dense_forward_kl(student, teacher, mask), atol=1e-9)
    assert float(dense_forward_kl(student, teacher, mask)) >= -1e-12
