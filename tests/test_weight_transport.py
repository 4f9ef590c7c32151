"""Collective weight sync (``asyncopd/runtime/weight_transport.py``): the bucket layout packs and
unpacks every byte, the hash tells any bit apart, and a two-rank gloo group moves a real
model's weights bitwise. The trainer runs with it under every pause mode in
``tests/test_trainer_e2e.py``."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.runtime.weight_transport import BucketLayout, WeightChannel, connect_store, open_store, weights_digest

DTYPES = [torch.float32, torch.bfloat16, torch.int64]


@st.composite
def state_dicts(draw) -> dict[str, torch.Tensor]:
    n = draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    state: dict[str, torch.Tensor] = {}
    for i in range(n):
        if state and draw(st.booleans()) and draw(st.booleans()):  # a tied entry: the same storage again
            state[f"tied{i}"] = state[draw(st.sampled_from(sorted(state)))]
            continue
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=3)))
        dtype = draw(st.sampled_from(DTYPES))
        t = torch.randint(-1000, 1000, shape, generator=gen) if dtype == torch.int64 else \
            torch.randn(shape, generator=gen).to(dtype)
        state[f"w{i}"] = t
    return state


@settings(max_examples=150, deadline=None)
@given(state=state_dicts(), bucket_bytes=st.integers(1, 400))
def test_buckets_carry_every_byte_and_respect_their_size(state, bucket_bytes) -> None:
    layout = BucketLayout.of(state, bucket_bytes)
    buckets = layout.pack(state, "cpu")
    out = layout.unpack(buckets)
    assert list(out) == list(state) or set(out) == set(state)
    for name, t in state.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name].view(-1).view(torch.uint8), t.reshape(-1).contiguous().view(torch.uint8))
    for b, dtype in zip(buckets, layout.bucket_dtypes):
        assert b.dtype == dtype
        in_bucket = [s for s in layout.slots if buckets[s.bucket] is b]
        assert len(in_bucket) == 1 or b.numel() * b.element_size() <= bucket_bytes
    for name, same in layout.aliases:  # a tied tensor travels once and shares its twin's storage
        assert out[name].data_ptr() == out[same].data_ptr()
    assert weights_digest(out) == weights_digest(state)


@settings(max_examples=80, deadline=None)
@given(state=state_dicts(), which=st.integers(0, 10**6))
def test_one_changed_element_changes_the_digest(state, which) -> None:
    name = sorted(state)[which % len(state)]
    if state[name].numel() == 0:
        return
    other = {k: v.clone() for k, v in state.items()}
    flat = other[name].view(-1)
    i = which % flat.numel()
    flat[i] = flat[i] + 1 if flat.dtype == torch.int64 else torch.nextafter(flat[i].float(), torch.tensor(1e9)).to(flat.dtype)
    if torch.equal(other[name], state[name]):  # (bfloat16 rounded the step away)
        return
    assert weights_digest(other) != weights_digest(state)


def test_fingerprints_tell_architectures_apart() -> None:
    a = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    b = {"w": torch.zeros(3, 4), "b": torch.zeros(3)}
    assert BucketLayout.of(a, 64).fingerprint() == BucketLayout.of({k: v.clone() for k, v in a.items()}, 64).fingerprint()
    assert BucketLayout.of(a, 64).fingerprint() != BucketLayout.of(b, 64).fingerprint()
    assert BucketLayout.of(a, 64).fingerprint() != BucketLayout.of(a, 8).fingerprint()


def _model(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _receive(address: str, bucket_bytes: int, fingerprint: str, out: "mp.Queue") -> None:
    model = _model(seed=1)  # other weights, same architecture
    layout = BucketLayout.of(model.state_dict(), bucket_bytes)
    assert layout.fingerprint() == fingerprint
    channel = WeightChannel(connect_store(address, 60), 1, "gloo", 60)
    buckets = layout.empty("cpu")
    for _ in range(2):  # two versions through the same group and buffers
        channel.broadcast(buckets)
        model.load_state_dict(layout.unpack(buckets), strict=True)
        out.put(weights_digest(model.state_dict()))


def test_a_two_rank_gloo_group_moves_a_model_bitwise() -> None:
    model = _model(seed=0)
    bucket_bytes = 16 * 1024  # several buckets
    layout = BucketLayout.of(model.state_dict(), bucket_bytes)
    assert len(layout.bucket_sizes) > 2 and layout.aliases  # (the tied head travels once)
    store, address = open_store("127.0.0.1", 60)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    peer = ctx.Process(target=_receive, args=(address, bucket_bytes, layout.fingerprint(), out))
    peer.start()
    channel = WeightChannel(store, 0, "gloo", 60)
    digests = []
    for version in range(2):
        if version:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
        channel.broadcast(layout.pack(model.state_dict(), "cpu"))
        digests.append(weights_digest(model.state_dict()))
    received = [out.get(timeout=60) for _ in range(2)]
    peer.join(timeout=60)
    assert peer.exitcode == 0
    assert received == digests and digests[0] != digests[1]


def test_an_unknown_backend_is_refused() -> None:
    store, _ = open_store("127.0.0.1", 5)
    with pytest.raises(ValueError, match="unknown process-group backend"):
        WeightChannel(store, 0, "mpi", 5)
