"""Hardware presets and model descriptions of the simulator's analytic cost models."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncopd.catalog.hardware import HARDWARE, Hardware, get_hardware
from asyncopd.catalog import (
    BUILTIN_MODELS,
    MODELS,
    ModelConfigError,
    ModelDesc,
    builtin_model_desc,
    from_hf_config,
    get_model,
)

REPO = Path(__file__).resolve().parents[1]

# Published totals (and, for Qwen, non-embedding counts) from the model cards on the Hugging
# Face hub: Qwen/Qwen3-*, Qwen/Qwen2.5-*, meta-llama/Llama-3.1-*, meta-llama/Llama-3.2-*.
PUBLISHED_TOTAL = {
    "qwen3-0.6b": 0.6e9, "qwen3-1.7b": 1.7e9, "qwen3-4b": 4.0e9, "qwen3-8b": 8.2e9,
    "qwen3-14b": 14.8e9, "qwen3-32b": 32.8e9, "qwen3-30b-a3b": 30.5e9,
    "qwen2.5-0.5b": 0.49e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-3b": 3.09e9, "qwen2.5-7b": 7.61e9,
    "qwen2.5-14b": 14.7e9, "qwen2.5-32b": 32.5e9, "qwen2.5-72b": 72.7e9,
    "llama-3.1-8b": 8.03e9, "llama-3.1-70b": 70.6e9, "llama-3.2-1b": 1.23e9, "llama-3.2-3b": 3.21e9,
}
PUBLISHED_NONEMBEDDING = {
    "qwen3-0.6b": 0.44e9, "qwen3-1.7b": 1.4e9, "qwen3-4b": 3.6e9, "qwen3-8b": 6.95e9,
    "qwen3-14b": 13.2e9, "qwen3-32b": 31.2e9, "qwen3-30b-a3b": 29.9e9,
    "qwen2.5-0.5b": 0.36e9, "qwen2.5-1.5b": 1.31e9, "qwen2.5-3b": 2.77e9, "qwen2.5-7b": 6.53e9,
    "qwen2.5-14b": 13.1e9, "qwen2.5-32b": 31.0e9, "qwen2.5-72b": 70.0e9,
}
TOL = 0.03


# ---------------------------------------------------------------------- parameter counts
def test_every_preset_has_a_published_figure():
    assert set(MODELS) == set(PUBLISHED_TOTAL)


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL))
def test_total_params_match_published(name):
    assert MODELS[name].n_params == pytest.approx(PUBLISHED_TOTAL[name], rel=TOL)


@pytest.mark.parametrize("name", sorted(PUBLISHED_NONEMBEDDING))
def test_nonembedding_params_match_qwen_cards(name):
    assert MODELS[name].n_nonembedding_params == pytest.approx(PUBLISHED_NONEMBEDDING[name], rel=TOL)


def test_moe_active_params():
    moe = MODELS["qwen3-30b-a3b"]
    assert moe.is_moe and moe.num_moe_layers == 48
    assert moe.n_active_params == pytest.approx(3.3e9, rel=TOL)  # "3.3B activated"
    assert moe.n_active_params < moe.n_params
    for m in MODELS.values():
        if not m.is_moe:
            assert m.n_active_params == m.n_params


def test_exact_count_of_a_small_dense_model():
    # hand count: embed 100*16 (tied); per layer q,o 16*16, k,v 16*8, mlp 3*16*32, 2 norms; final norm
    m = ModelDesc("t", vocab_size=100, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=4, intermediate_size=32, tie_embeddings=True)
    per_layer = 2 * 16 * 16 + 2 * 16 * 8 + 3 * 16 * 32 + 2 * 16
    assert m.n_params == 100 * 16 + 2 * per_layer + 16
    assert replace(m, tie_embeddings=False).n_params == m.n_params + 100 * 16
    assert replace(m, qkv_bias=True).n_params == m.n_params + 2 * (16 + 8 + 8)
    assert replace(m, qk_norm=True).n_params == m.n_params + 2 * 2 * 4


# ---------------------------------------------------------------------- bytes and FLOPs
def test_kv_bytes_per_token():
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token() == 131072  # 128 KiB in bf16
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token(dtype_bytes=1) == 65536
    assert MODELS["qwen3-8b"].kv_bytes_per_token() == 2 * 36 * 8 * 128 * 2
    assert MODELS["qwen3-30b-a3b"].kv_bytes_per_token() == 2 * 48 * 4 * 128 * 2


def test_weight_bytes():
    m = MODELS["qwen3-8b"]
    assert m.weight_bytes() == 2 * m.n_params
    assert m.weight_bytes(dtype_bytes=1) == m.n_params


def test_flops_per_token():
    m = MODELS["llama-3.1-8b"]
    f0 = m.flops_per_token()
    # untied: 2 * (N - input embedding table), up to norms
    assert f0 == pytest.approx(2 * (m.n_params - m.vocab_size * m.hidden_size), rel=1e-4)
    assert m.flops_per_token(4096) - f0 == 4 * 32 * 32 * 128 * 4096
    assert m.train_flops_per_token(4096) == 3 * m.flops_per_token(4096)
    tied = MODELS["qwen3-0.6b"]
    assert tied.flops_per_token() == pytest.approx(2 * tied.n_params, rel=1e-3)
    moe = MODELS["qwen3-30b-a3b"]
    assert moe.flops_per_token() < 2 * moe.n_active_params
    assert moe.flops_per_token() == pytest.approx(2 * (moe.n_active_params - moe.vocab_size * moe.hidden_size),
                                                  rel=1e-3)
    with pytest.raises(ValueError):
        m.flops_per_token(-1)


def test_prefill_flops_sums_per_token_flops():
    m = MODELS["qwen3-1.7b"]
    for past in (0, 7):
        want = sum(m.flops_per_token(past + i + 1) for i in range(13))
        assert m.prefill_flops(13, past_len=past) == pytest.approx(want, rel=1e-12)
    assert m.prefill_flops(0) == 0


def test_decode_weight_bytes():
    dense = MODELS["llama-3.1-8b"]
    assert dense.decode_weight_bytes(1) == dense.decode_weight_bytes(64) < dense.weight_bytes()
    moe = MODELS["qwen3-30b-a3b"]
    reads = [moe.decode_weight_bytes(b) for b in (1, 4, 16, 64, 256, 4096)]
    assert reads == sorted(reads)
    assert reads[0] == pytest.approx(2 * (moe.n_active_params - moe.vocab_size * moe.hidden_size))
    assert reads[-1] == pytest.approx(moe.weight_bytes() - 2 * moe.vocab_size * moe.hidden_size, rel=1e-6)


# ---------------------------------------------------------------------- config.json
LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "tie_word_embeddings": False, "attention_bias": False, "rms_norm_eps": 1e-5,
    "torch_dtype": "bfloat16",
}
QWEN3_30B_A3B_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
    "max_position_embeddings": 40960, "tie_word_embeddings": False, "num_experts": 128,
    "num_experts_per_tok": 8, "moe_intermediate_size": 768, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "norm_topk_prob": True,
}
QWEN25_7B_CONFIG = {
    "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
}


def _write(tmp_path: Path, cfg: dict, sub: str = "model") -> Path:
    d = tmp_path / sub
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("cfg,preset", [(LLAMA_31_8B_CONFIG, "llama-3.1-8b"),
                                        (QWEN3_30B_A3B_CONFIG, "qwen3-30b-a3b"),
                                        (QWEN25_7B_CONFIG, "qwen2.5-7b")])
def test_from_hf_config_round_trip(tmp_path, cfg, preset):
    d = _write(tmp_path, cfg)
    want = MODELS[preset]
    for src in (d, d / "config.json", str(d), cfg):
        got = from_hf_config(src, name=preset)
        assert got == want
    assert ModelDesc.from_hf_config(d, name=preset) == want
    via_path = get_model(str(d))
    assert replace(via_path, name=preset) == want
    assert via_path.name == "model"  # the directory's name


def test_from_hf_config_moe_layer_pattern():
    cfg = {**QWEN3_30B_A3B_CONFIG, "num_hidden_layers": 6, "decoder_sparse_step": 2,
           "mlp_only_layers": [1]}
    m = from_hf_config(cfg)
    # sparse iff (i+1) % 2 == 0 and i not in [1]: layers 3 and 5
    assert m.num_moe_layers == 2 and m.num_dense_layers == 4
    mixtral = from_hf_config({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
                              "num_hidden_layers": 32, "num_attention_heads": 32,
                              "num_key_value_heads": 8, "intermediate_size": 14336,
                              "num_local_experts": 8, "num_experts_per_tok": 2})
    # Mixtral-8x7B model card / paper: 46.7B total, 12.9B active
    assert mixtral.n_params == pytest.approx(46.7e9, rel=0.01)
    assert mixtral.n_active_params == pytest.approx(12.9e9, rel=0.01)


def test_from_hf_config_generic_fallback_and_defaults():
    m = from_hf_config({"model_type": "somethingnew", "vocab_size": 1000, "hidden_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96})
    assert m.num_kv_heads == 4 and m.head_dim == 16 and not m.tie_embeddings
    nested = from_hf_config({"model_type": "wrapper", "text_config": {
        "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 96}})
    assert nested.n_params == m.n_params


def test_bad_config_errors_name_file_and_key(tmp_path):
    bad = {k: v for k, v in LLAMA_31_8B_CONFIG.items() if k != "num_hidden_layers"}
    d = _write(tmp_path, bad)
    with pytest.raises(ModelConfigError) as e:
        from_hf_config(d)
    msg = str(e.value)
    assert "num_hidden_layers" in msg and str(d / "config.json") in msg and "\n" not in msg
    moe = {k: v for k, v in QWEN3_30B_A3B_CONFIG.items() if k != "moe_intermediate_size"}
    with pytest.raises(ModelConfigError, match="moe_intermediate_size"):
        from_hf_config(_write(tmp_path, moe, "moe"))
    with pytest.raises(ModelConfigError, match="must be an integer"):
        from_hf_config({**LLAMA_31_8B_CONFIG, "hidden_size": "4096"})
    with pytest.raises(ModelConfigError, match="not a multiple"):
        from_hf_config({**LLAMA_31_8B_CONFIG, "num_key_value_heads": 5})
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="broken.json"):
        from_hf_config(tmp_path / "broken.json")
    with pytest.raises(ModelConfigError, match="no such config file"):
        from_hf_config(tmp_path / "nowhere")


# ---------------------------------------------------------------------- lookup
@pytest.mark.parametrize("alias,preset", [
    ("Qwen/Qwen3-8B", "qwen3-8b"), ("QWEN3-8B", "qwen3-8b"), ("Qwen/Qwen3-8B-Base", "qwen3-8b"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"), ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("meta-llama/Meta-Llama-3.1-70B", "llama-3.1-70b"), ("llama3.2-1b", "llama-3.2-1b"),
    ("Qwen/Qwen3-30B-A3B-Instruct-2507", "qwen3-30b-a3b"),
])
def test_get_model_aliases(alias, preset):
    assert get_model(alias) is MODELS[preset]


def test_get_model_unknown_lists_presets():
    with pytest.raises(KeyError) as e:
        get_model("gpt-5")
    msg = str(e.value)
    assert "gpt-5" in msg and "qwen3-8b" in msg and "builtin-teacher" in msg
    assert isinstance(e.value, ModelConfigError)
    m = MODELS["qwen3-8b"]
    assert get_model(m) is m


def test_builtin_model_desc_mirrors_presets():
    presets = pytest.importorskip("asyncopd.models.presets")
    from asyncopd.task import CharCodec
    for name, p in (("builtin-teacher", presets.TEACHER), ("builtin-student", presets.STUDENT)):
        m = get_model(name)
        assert m == builtin_model_desc(name.upper())
        a = p.arch
        assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads, m.num_kv_heads,
                m.tie_embeddings) == (a.hidden_size, a.intermediate_size, a.num_hidden_layers,
                                      a.num_attention_heads, a.num_key_value_heads,
                                      a.tie_word_embeddings)
        assert m.vocab_size == CharCodec().vocab_size
        assert m.head_dim * m.num_heads == m.hidden_size
    assert set(BUILTIN_MODELS) == {"builtin-teacher", "builtin-student"}
    with pytest.raises(KeyError, match="builtin-teacher"):
        builtin_model_desc("builtin-nope")


# ---------------------------------------------------------------------- hardware
def test_hardware_presets_datasheet_figures():
    h100 = HARDWARE["h100-sxm"]
    assert (h100.peak_flops, h100.mem_bw, h100.mem_bytes) == (989e12, 3.35e12, 80e9)
    h200 = HARDWARE["h200"]
    assert h200.peak_flops == h100.peak_flops and h200.mem_bw == 4.8e12 and h200.mem_bytes == 141e9
    assert HARDWARE["a100-80gb"].peak_flops == 312e12
    assert HARDWARE["b200"].peak_flops > h100.peak_flops
    assert HARDWARE["cpu"].devices_per_node == 2
    for name, h in HARDWARE.items():
        assert h.name == name
        assert h.inter_node_bw < h.intra_node_bw
        assert 0 < h.flops_eff <= 1 and 0 < h.bw_eff <= 1
        assert h.eff_flops == h.peak_flops * h.flops_eff
        assert h.ridge_intensity == pytest.approx(h.eff_flops / h.eff_mem_bw)
    assert h100.link_bw(8) == h100.intra_node_bw and h100.link_bw(16) == h100.inter_node_bw


@pytest.mark.parametrize("alias,name", [("H100", "h100-sxm"), ("h100_sxm", "h100-sxm"),
                                        ("a100", "a100-80gb"), (" H200 ", "h200"),
                                        ("B200", "b200"), ("CPU", "cpu")])
def test_get_hardware_aliases(alias, name):
    assert get_hardware(alias) is HARDWARE[name]


def test_get_hardware_unknown_and_overrides():
    with pytest.raises(KeyError) as e:
        get_hardware("tpu-v5")
    msg = str(e.value)
    assert "tpu-v5" in msg and all(n in msg for n in HARDWARE)
    with pytest.raises(ValueError):  # also a ValueError
        get_hardware("mi300")
    h = get_hardware("h100").with_overrides(flops_eff=0.4, mem_bw=3e12)
    assert isinstance(h, Hardware) and h.flops_eff == 0.4 and h.mem_bw == 3e12
    assert HARDWARE["h100-sxm"].flops_eff != 0.4  # presets untouched
    with pytest.raises(TypeError, match="peak_flop"):
        h.with_overrides(peak_flop=1.0)
    with pytest.raises(ValueError, match="flops_eff"):
        h.with_overrides(flops_eff=1.5)
    with pytest.raises(ValueError, match="mem_bw"):
        h.with_overrides(mem_bw=0)


# ---------------------------------------------------------------------- purity and properties
def _torch_free(code: str) -> None:
    code = (f"import sys; {code}; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_import_is_torch_free():
    _torch_free("import asyncopd.catalog as c; c.get_model('Qwen/Qwen3-8B'); "
                "c.get_hardware('h100')")


def test_builtin_model_desc_is_torch_free():
    _torch_free("import asyncopd.catalog as c; c.get_model('builtin-teacher')")


_dims = st.fixed_dictionaries({
    "vocab_size": st.integers(1, 200_000), "hidden_size": st.integers(1, 16384),
    "num_layers": st.integers(1, 128), "num_kv_heads": st.integers(1, 16),
    "group": st.integers(1, 8), "head_dim": st.integers(1, 256),
    "intermediate_size": st.integers(1, 65536), "tie_embeddings": st.booleans(),
    "num_experts": st.sampled_from([0, 8, 64]), "experts_per_token": st.integers(1, 8),
})


def _desc(d: dict) -> ModelDesc:
    moe = d["num_experts"]
    return ModelDesc(
        name="h", vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
        num_layers=d["num_layers"], num_heads=d["num_kv_heads"] * d["group"],
        num_kv_heads=d["num_kv_heads"], head_dim=d["head_dim"],
        intermediate_size=d["intermediate_size"], tie_embeddings=d["tie_embeddings"],
        num_experts=moe, experts_per_token=d["experts_per_token"] if moe else 0,
        moe_intermediate_size=d["intermediate_size"] // 4 + 1 if moe else 0)


@settings(max_examples=200, deadline=None)
@given(_dims, st.integers(1, 16), st.integers(1, 4096))
def test_counts_monotone_in_layers_and_hidden(d, extra_layers, extra_hidden):
    m = _desc(d)
    deeper = replace(m, num_layers=m.num_layers + extra_layers)
    wider = replace(m, hidden_size=m.hidden_size + extra_hidden)
    for bigger in (deeper, wider):
        assert bigger.n_params > m.n_params
        assert bigger.n_active_params > m.n_active_params
        assert bigger.flops_per_token(1024) > m.flops_per_token(1024)
    assert deeper.kv_bytes_per_token() > m.kv_bytes_per_token()
    assert m.n_active_params <= m.n_params
    assert (m.n_active_params < m.n_params) == (m.num_experts > m.experts_per_token > 0)
    assert 0 < m.decode_weight_bytes(1) <= m.decode_weight_bytes(256) <= m.weight_bytes()


# ---------------------------------------------------------------------- reference implementation
@pytest.mark.slow
def test_counts_match_transformers_implementation():
    """Parameter counts equal those of the transformers classes (meta device: no memory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    small = [
        {"model_type": "llama", "attention_bias": True, "num_key_value_heads": 2},
        {"model_type": "mistral", "num_key_value_heads": 2, "head_dim": None},
        {"model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": True},
        {"model_type": "qwen3", "num_key_value_heads": 2, "head_dim": 32},
        {"model_type": "qwen3_moe", "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8,
         "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
         "mlp_only_layers": [0]},
        {"model_type": "qwen2_moe", "num_key_value_heads": 4, "num_experts": 8,
         "num_experts_per_tok": 2, "moe_intermediate_size": 32,
         "shared_expert_intermediate_size": 48, "decoder_sparse_step": 2, "mlp_only_layers": []},
        {"model_type": "mixtral", "num_key_value_heads": 2, "num_local_experts": 4,
         "num_experts_per_tok": 2},
    ]
    base = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 96, "tie_word_embeddings": False}
    for extra in small:
        cfg = {**base, **extra}
        hf = transformers.AutoConfig.for_model(**cfg)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(hf)
        n = sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once
        assert from_hf_config(cfg).n_params == n, cfg["model_type"]
    presets = pytest.importorskip("asyncopd.models.presets")
    from asyncopd.task import CharCodec
    for p in (presets.TEACHER, presets.STUDENT):
        hf = transformers.LlamaConfig(vocab_size=CharCodec().vocab_size, **p.arch.as_dict())
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(hf)
        assert builtin_model_desc(p.name).n_params == sum(x.numel() for x in model.parameters())
