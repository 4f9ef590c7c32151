"""The model catalogue: public architectures by name, the built-in tiny models, local checkpoints.

``MODELS`` holds published architectures (their ``config.json`` figures, sources beside each
family); ``BUILTIN_MODELS`` are the names of the tiny models the trainer builds itself
(``asyncopd.models.presets.PRESETS``, the one list of them). ``get_model`` resolves any of
these, a hub id that names a preset (``Qwen/Qwen3-8B``), or a local checkpoint directory.

Pure Python on purpose: ``import sim`` must not pull in torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Union

from asyncopd.catalog.errors import UnknownModelError
from asyncopd.catalog.model_desc import ModelDesc, from_hf_config
from asyncopd.models.presets import PRESETS
from asyncopd.task.codec import CharCodec

BUILTIN_MODELS: tuple[str, ...] = tuple(PRESETS)  # the tiny models the trainer builds itself


def _qwen3(name: str, hidden: int, layers: int, heads: int, kv: int, inter: int, tie: bool,
           **kw: Any) -> ModelDesc:
    return ModelDesc(name=name, vocab_size=151936, hidden_size=hidden, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv, head_dim=128, intermediate_size=inter,
                     tie_embeddings=tie, qk_norm=True, max_position_embeddings=40960, **kw)


def _qwen25(name: str, vocab: int, hidden: int, layers: int, heads: int, kv: int, inter: int,
            tie: bool) -> ModelDesc:
    return ModelDesc(name=name, vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                     num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                     intermediate_size=inter, tie_embeddings=tie, qkv_bias=True,
                     max_position_embeddings=32768)


def _llama3(name: str, hidden: int, layers: int, heads: int, inter: int, tie: bool) -> ModelDesc:
    return ModelDesc(name=name, vocab_size=128256, hidden_size=hidden, num_layers=layers,
                     num_heads=heads, num_kv_heads=8, head_dim=hidden // heads,
                     intermediate_size=inter, tie_embeddings=tie, max_position_embeddings=131072)


_PRESET_LIST = [
    # Qwen3 dense and MoE: config.json of Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B,32B,30B-A3B} on the
    # Hugging Face hub (vocab 151936, head_dim 128, q/k norms, 40960 positions).
    _qwen3("qwen3-0.6b", 1024, 28, 16, 8, 3072, True),
    _qwen3("qwen3-1.7b", 2048, 28, 16, 8, 6144, True),
    _qwen3("qwen3-4b", 2560, 36, 32, 8, 9728, True),
    _qwen3("qwen3-8b", 4096, 36, 32, 8, 12288, False),
    _qwen3("qwen3-14b", 5120, 40, 40, 8, 17408, False),
    _qwen3("qwen3-32b", 5120, 64, 64, 8, 25600, False),
    # 48 layers, all MoE (decoder_sparse_step 1, no mlp_only_layers); 128 experts, top-8.
    _qwen3("qwen3-30b-a3b", 2048, 48, 32, 4, 6144, False,
           num_experts=128, experts_per_token=8, moe_intermediate_size=768),
    # Qwen2.5: config.json of Qwen/Qwen2.5-{0.5B,...,72B} on the Hugging Face hub
    # (q/k/v biases; vocab 151936 up to 3B, 152064 from 7B; tied embeddings up to 3B).
    _qwen25("qwen2.5-0.5b", 151936, 896, 24, 14, 2, 4864, True),
    _qwen25("qwen2.5-1.5b", 151936, 1536, 28, 12, 2, 8960, True),
    _qwen25("qwen2.5-3b", 151936, 2048, 36, 16, 2, 11008, True),
    _qwen25("qwen2.5-7b", 152064, 3584, 28, 28, 4, 18944, False),
    _qwen25("qwen2.5-14b", 152064, 5120, 48, 40, 8, 13824, False),
    _qwen25("qwen2.5-32b", 152064, 5120, 64, 40, 8, 27648, False),
    _qwen25("qwen2.5-72b", 152064, 8192, 80, 64, 8, 29568, False),
    # Llama 3.1 / 3.2: config.json of meta-llama/Llama-3.1-{8B,70B} and
    # meta-llama/Llama-3.2-{1B,3B} on the Hugging Face hub (vocab 128256, 8 KV heads).
    _llama3("llama-3.1-8b", 4096, 32, 32, 14336, False),
    _llama3("llama-3.1-70b", 8192, 80, 64, 28672, False),
    _llama3("llama-3.2-1b", 2048, 16, 32, 8192, True),
    _llama3("llama-3.2-3b", 3072, 28, 24, 8192, True),
]

MODELS: dict[str, ModelDesc] = {m.name: m for m in _PRESET_LIST}


def _norm_model_name(name: str) -> str:
    s = name.strip().lower().replace("_", "-").replace(" ", "-")
    s = s.rsplit("/", 1)[-1]  # hub id "Qwen/Qwen3-8B" -> "qwen3-8b"
    if s.startswith("meta-llama-"):
        s = s[len("meta-"):]
    s = re.sub(r"^llama(\d)", r"llama-\1", s)  # llama3.1-8b -> llama-3.1-8b
    s = re.sub(r"-(instruct|base|chat|it)(-\d+)?$", "", s)  # same architecture
    return s


def builtin_model_desc(preset_name: str) -> ModelDesc:
    """The architecture of a built-in tiny model (``builtin-teacher``/``builtin-student``),
    from ``asyncopd.models.presets`` and the built-in task's character codec."""
    key = preset_name.strip().lower()
    preset = PRESETS.get(key)
    if preset is None:
        raise UnknownModelError(f"unknown builtin model {preset_name!r}; valid: "
                                f"{', '.join(sorted(PRESETS))}")
    arch = preset.arch
    return ModelDesc(
        name=preset.name, vocab_size=CharCodec().vocab_size, hidden_size=arch.hidden_size,
        num_layers=arch.num_hidden_layers, num_heads=arch.num_attention_heads,
        num_kv_heads=arch.num_key_value_heads, head_dim=arch.hidden_size // arch.num_attention_heads,
        intermediate_size=arch.intermediate_size, tie_embeddings=arch.tie_word_embeddings,
        max_position_embeddings=arch.max_position_embeddings)


def get_model(name_or_path: Union[str, os.PathLike, ModelDesc]) -> ModelDesc:
    """A preset by name (case-insensitive; hub ids such as ``"Qwen/Qwen3-8B"`` and
    ``-Instruct``/``-Base`` variants map to the same architecture), a built-in tiny model
    (``builtin-teacher``/``builtin-student``), or a local directory / ``config.json``.
    A :class:`ModelDesc` is returned unchanged."""
    if isinstance(name_or_path, ModelDesc):
        return name_or_path
    if isinstance(name_or_path, os.PathLike):
        return from_hf_config(name_or_path)
    if not isinstance(name_or_path, str):
        raise TypeError(f"get_model: expected a name or path, got {type(name_or_path).__name__}")
    raw = name_or_path
    if raw.strip().lower() in BUILTIN_MODELS:
        return builtin_model_desc(raw)
    p = Path(os.path.expanduser(raw))
    if p.is_dir() or p.is_file():
        return from_hf_config(p)
    key = _norm_model_name(raw)
    if key in MODELS:
        return MODELS[key]
    raise UnknownModelError(
        f"unknown model {raw!r} (not a preset and not an existing directory or config.json); "
        f"presets: {', '.join(list(MODELS) + list(BUILTIN_MODELS))}")


def model_desc_for(spec: Any) -> ModelDesc:
    """The description of a config ``ModelSpec`` (``preset`` name or local ``path``)."""
    return get_model(spec.preset if spec.preset is not None else spec.path)
