"""Reading a Hugging Face ``config.json`` into the fields of a model description.

Pure Python (json only): the simulator and the config describe a local checkpoint without
loading it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from asyncopd.catalog.errors import ModelConfigError


def is_int(v: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(v, int) and not isinstance(v, bool)


_KNOWN_FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")


def _load_config(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[dict, str]:
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "<config dict>"
    p = Path(path_or_dict)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ModelConfigError(f"{p}: no such config file (expected a Hugging Face config.json "
                               f"or a directory holding one)")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelConfigError(f"{p}: cannot read as JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ModelConfigError(f"{p}: expected a JSON object, got {type(cfg).__name__}")
    return cfg, str(p)


def hf_config_fields(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
                     name: Optional[str] = None) -> tuple[dict[str, Any], str]:
    """The ``ModelDesc`` fields a Hugging Face ``config.json`` describes, and where it was read
    (for messages); ``asyncopd.catalog.model_desc.from_hf_config`` builds the description.

    Families with their specifics: ``llama`` (``attention_bias``), ``mistral``,
    ``mixtral`` (``num_local_experts``; ``intermediate_size`` is the expert width),
    ``qwen2`` (q/k/v biases), ``qwen3`` (q/k norms), ``qwen2_moe`` (shared expert,
    ``decoder_sparse_step``, ``mlp_only_layers``), ``qwen3_moe``. Any other
    ``model_type`` is read with the standard keys (a generic Llama-like model); a config
    whose text model sits under ``text_config`` is read from there.

    Missing keys raise :class:`ModelConfigError` naming the file and the key.
    """
    cfg, where = _load_config(path_or_dict)
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type",
                                                                          cfg.get("model_type"))}
    mtype = str(cfg.get("model_type") or "")
    family = mtype if mtype in _KNOWN_FAMILIES else "generic"

    def req(key: str) -> Any:
        if cfg.get(key) is None:
            raise ModelConfigError(f"{where}: missing key {key!r} (model_type {mtype or '?'!r})")
        return cfg[key]

    def integer(key: str, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_int(value):
            raise ModelConfigError(f"{where}: key {key!r} must be an integer, got {value!r}")
        return value

    def opt(key: str, default: Any) -> Any:
        v = cfg.get(key)
        return default if v is None else v

    vocab = integer("vocab_size", req("vocab_size"))
    hidden = integer("hidden_size", req("hidden_size"))
    layers = integer("num_hidden_layers", req("num_hidden_layers"))
    heads = integer("num_attention_heads", req("num_attention_heads"))
    # transformers' Llama semantics: no num_key_value_heads means multi-head attention.
    kv_heads = integer("num_key_value_heads", opt("num_key_value_heads", heads))
    if cfg.get("head_dim") is not None:
        head_dim = integer("head_dim", cfg["head_dim"])
    elif family in ("qwen3", "qwen3_moe"):
        head_dim = 128  # transformers' Qwen3Config / Qwen3MoeConfig default
    else:
        if hidden % heads:
            raise ModelConfigError(f"{where}: missing key 'head_dim' and hidden_size {hidden} is "
                                   f"not divisible by num_attention_heads {heads}")
        head_dim = hidden // heads
    tie = bool(opt("tie_word_embeddings", False))
    max_pos = integer("max_position_embeddings", opt("max_position_embeddings", 0))

    attention_bias = bool(opt("attention_bias", False))
    qkv_bias = attention_bias
    o_bias = attention_bias
    if family in ("qwen2", "qwen2_moe"):
        qkv_bias, o_bias = True, False  # hard-wired in transformers' Qwen2 attention
    qk_norm = family in ("qwen3", "qwen3_moe")

    # --- MLP / MoE ---
    num_experts = integer("num_experts", opt("num_experts", opt("num_local_experts", 0)))
    top_k = moe_inter = shared_inter = dense_layers = 0
    inter = 0
    if num_experts:
        top_k = integer("num_experts_per_tok", req("num_experts_per_tok"))
        if family == "mixtral":
            moe_inter = integer("intermediate_size", req("intermediate_size"))
        elif family in ("qwen2_moe", "qwen3_moe"):
            moe_inter = integer("moe_intermediate_size", req("moe_intermediate_size"))
        else:
            moe_inter = integer("moe_intermediate_size",
                                opt("moe_intermediate_size", req("intermediate_size")))
        shared_inter = integer("shared_expert_intermediate_size",
                               opt("shared_expert_intermediate_size", 0))
        if family in ("qwen2_moe", "qwen3_moe"):
            step = integer("decoder_sparse_step", opt("decoder_sparse_step", 1))
            only_dense = set(opt("mlp_only_layers", []))
            if step < 1:
                raise ModelConfigError(f"{where}: decoder_sparse_step must be >= 1, got {step}")
            sparse = sum(1 for i in range(layers) if i not in only_dense and (i + 1) % step == 0)
            dense_layers = layers - sparse
        if family == "mixtral":
            inter = 0  # its intermediate_size is the expert width
        elif dense_layers:
            inter = integer("intermediate_size", req("intermediate_size"))
        else:  # unused by an all-MoE model; kept for information
            inter = integer("intermediate_size", opt("intermediate_size", 0))
    else:
        inter = integer("intermediate_size", req("intermediate_size"))

    if name is None:
        name = str(cfg.get("_name_or_path") or "") or (
            Path(where).parent.name if where != "<config dict>" else (mtype or "model"))
    return dict(
        name=name, vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter, tie_embeddings=tie,
        num_experts=num_experts, experts_per_token=top_k, moe_intermediate_size=moe_inter,
        shared_expert_intermediate_size=shared_inter, num_dense_layers=dense_layers,
        qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm, max_position_embeddings=max_pos), where
