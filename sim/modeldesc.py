"""Architecture descriptions of decoder-only LMs, for the simulator's analytic cost models.

A :class:`ModelDesc` holds the hyper-parameters that decide cost: parameter counts (total
and active per token), weight bytes, KV-cache bytes per token and FLOPs per token. Build
one from a preset (:data:`MODELS`, :func:`get_model`), from a local Hugging Face
``config.json`` (:meth:`ModelDesc.from_hf_config`), or for the built-in tiny models
(:func:`builtin_model_desc`).

Parameter counting (``n_params``)
---------------------------------
Counted exactly as a Llama/Qwen/Mistral-style ``*ForCausalLM`` stores them:

* token embedding ``vocab * hidden``; an output head of the same size unless tied;
* per layer, attention: ``q`` (``hidden x heads*head_dim``), ``k`` and ``v``
  (``hidden x kv_heads*head_dim`` each, so GQA/MQA is covered), ``o``
  (``heads*head_dim x hidden``); biases when ``qkv_bias`` (Qwen2/2.5) / ``o_bias``;
  per-head RMSNorm weights on q and k when ``qk_norm`` (Qwen3);
* per layer, a gated MLP of 3 matrices (gate, up, down) of ``hidden x intermediate``;
  in an MoE layer instead ``num_experts`` such MLPs of ``moe_intermediate_size``, a
  router ``hidden x num_experts``, and optionally a shared expert MLP of
  ``shared_expert_intermediate_size`` with its 1-output gate (Qwen2-MoE);
* RMSNorm weights: 2 per layer and a final one (``hidden`` each). Norms and biases are
  included because they are cheap to count; they are < 0.1 % of any real model.

``n_active_params`` counts what one token touches: everything except the experts it is
not routed to (``experts_per_token`` of ``num_experts`` per MoE layer). It includes the
embedding table, as published "active" figures do.

FLOPs (``flops_per_token``)
---------------------------
Forward FLOPs of one token that attends to ``context_len`` keys::

    2 * n_matmul_params_active  +  4 * num_layers * num_heads * head_dim * context_len

The first term is the weight matmuls (a multiply-add = 2 FLOPs per weight). It is
"2 * N_active" minus the input embedding table when untied (a lookup, not a matmul) and
minus norms/biases; the LM head is counted once. The second term is attention scores
``QK^T`` and ``softmax(.)V``: 2 FLOPs per (head, dim, key) each. Softmax, norms and
activations are ignored. Sliding-window attention (Mistral) is not modelled: attention
is taken as full. Training is ~3x forward (backward = 2x forward), without activation
recomputation.

Pure Python on purpose: ``import sim`` must not pull in torch.
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union


class ModelConfigError(ValueError):
    """A model description could not be built (bad/missing config key, unknown name)."""


class UnknownModelError(ModelConfigError, KeyError):
    """An unknown model name (a ``ValueError`` and a ``KeyError``; prints its message plainly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelDesc:
    """Architecture of a decoder-only transformer LM (see the module docstring)."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense gated-MLP width (unused when every layer is MoE)
    tie_embeddings: bool = False
    # --- MoE (num_experts == 0: dense) ---
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0  # width of one routed expert's gated MLP
    shared_expert_intermediate_size: int = 0  # 0: no shared expert
    num_dense_layers: int = 0  # layers of an MoE model that use the dense MLP instead
    # --- small details that change parameter counts a little ---
    qkv_bias: bool = False  # biases on q, k, v projections (Qwen2 / Qwen2.5 / Qwen2-MoE)
    o_bias: bool = False  # bias on the output projection (Llama ``attention_bias``)
    qk_norm: bool = False  # per-head RMSNorm on q and k (Qwen3)
    max_position_embeddings: int = 0  # 0: unknown

    def __post_init__(self) -> None:
        n = self.name
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise ModelConfigError(f"model {n!r}: {f} must be a positive integer, got {v!r}")
        for f in ("intermediate_size", "num_experts", "experts_per_token", "moe_intermediate_size",
                  "shared_expert_intermediate_size", "num_dense_layers", "max_position_embeddings"):
            v = getattr(self, f)
            if not _is_int(v) or v < 0:
                raise ModelConfigError(f"model {n!r}: {f} must be a non-negative integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(f"model {n!r}: num_heads ({self.num_heads}) is not a multiple "
                                   f"of num_kv_heads ({self.num_kv_heads})")
        if self.num_experts:
            if not 1 <= self.experts_per_token <= self.num_experts:
                raise ModelConfigError(f"model {n!r}: experts_per_token must be in [1, num_experts="
                                       f"{self.num_experts}], got {self.experts_per_token}")
            if self.moe_intermediate_size < 1:
                raise ModelConfigError(f"model {n!r}: an MoE model needs moe_intermediate_size > 0")
            if self.num_dense_layers > self.num_layers:
                raise ModelConfigError(f"model {n!r}: num_dense_layers ({self.num_dense_layers}) "
                                       f"exceeds num_layers ({self.num_layers})")
        if self.num_dense_layers_effective and self.intermediate_size < 1:
            raise ModelConfigError(f"model {n!r}: dense MLP layers need intermediate_size > 0")

    # ------------------------------------------------------------------ structure
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers_effective(self) -> int:
        """Layers with the dense MLP (all of them in a dense model)."""
        return self.num_layers - self.num_moe_layers

    # ------------------------------------------------------------------ per-layer counts
    def _attn_params(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        p = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        if self.qkv_bias:
            p += q + 2 * kv
        if self.o_bias:
            p += self.hidden_size
        if self.qk_norm:
            p += 2 * self.head_dim
        return p

    def _attn_matmul_params(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return self.hidden_size * (q + 2 * kv) + q * self.hidden_size

    def _dense_mlp_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    def _expert_params(self) -> int:
        return 3 * self.hidden_size * self.moe_intermediate_size

    def _moe_shared_params(self) -> int:
        """Parameters of an MoE layer every token uses: router, shared expert and its gate."""
        p = self.hidden_size * self.num_experts
        if self.shared_expert_intermediate_size:
            p += 3 * self.hidden_size * self.shared_expert_intermediate_size + self.hidden_size
        return p

    @property
    def _embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def _norm_params(self) -> int:
        return (2 * self.num_layers + 1) * self.hidden_size

    # ------------------------------------------------------------------ parameter counts
    @cached_property
    def n_params(self) -> int:
        """Total parameters (tied embeddings counted once; norms and biases included)."""
        return (self._embedding_params + self._norm_params
                + self.num_layers * self._attn_params()
                + self.num_dense_layers_effective * self._dense_mlp_params()
                + self.num_moe_layers * (self.num_experts * self._expert_params()
                                         + self._moe_shared_params()))

    @cached_property
    def n_active_params(self) -> int:
        """Parameters one token uses (== ``n_params`` for a dense model)."""
        if not self.is_moe:
            return self.n_params
        idle = self.num_moe_layers * (self.num_experts - self.experts_per_token) * self._expert_params()
        return self.n_params - idle

    @cached_property
    def n_nonembedding_params(self) -> int:
        """``n_params`` without the embedding table and LM head (as Qwen model cards quote it)."""
        return self.n_params - self._embedding_params

    @cached_property
    def n_matmul_params_active(self) -> int:
        """Weights one token multiplies by: attention and MLP/expert matrices, router and
        LM head; not the input embedding lookup, norms or biases."""
        per_moe = self.experts_per_token * self._expert_params() + self.hidden_size * self.num_experts
        if self.shared_expert_intermediate_size:
            per_moe += 3 * self.hidden_size * self.shared_expert_intermediate_size + self.hidden_size
        return (self.vocab_size * self.hidden_size
                + self.num_layers * self._attn_matmul_params()
                + self.num_dense_layers_effective * self._dense_mlp_params()
                + (self.num_moe_layers * per_moe if self.is_moe else 0))

    # ------------------------------------------------------------------ bytes
    def weight_bytes(self, dtype_bytes: float = 2) -> float:
        """Bytes of all weights at ``dtype_bytes`` per parameter (bf16: 2)."""
        return self.n_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> float:
        """KV-cache bytes per token: ``2 * num_layers * num_kv_heads * head_dim * dtype_bytes``."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def decode_weight_bytes(self, batch_tokens: int, dtype_bytes: float = 2) -> float:
        """Expected weight bytes one decode step over ``batch_tokens`` tokens reads.

        Dense models read every weight (the input embedding table only for the rows looked
        up, which is ignored). An MoE layer reads the experts at least one token is routed
        to: ``E * (1 - (1 - k/E) ** B)`` of them in expectation under uniform routing (real
        routing is skewed, so this is an upper estimate of distinct experts).
        """
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        input_table = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        if not self.is_moe:
            return (self.n_params - input_table) * dtype_bytes
        e, k = self.num_experts, self.experts_per_token
        touched = e * (1.0 - (1.0 - k / e) ** batch_tokens)
        unread = self.num_moe_layers * (e - touched) * self._expert_params()
        return (self.n_params - input_table - unread) * dtype_bytes

    # ------------------------------------------------------------------ FLOPs
    def attn_flops_per_token(self, context_len: int = 0) -> float:
        """Attention score + value FLOPs of one token attending to ``context_len`` keys."""
        return 4.0 * self.num_layers * self.num_heads * self.head_dim * context_len

    def flops_per_token(self, context_len: int = 0) -> float:
        """Forward FLOPs of one token attending to ``context_len`` keys (see module docstring)."""
        if context_len < 0:
            raise ValueError(f"context_len must be >= 0, got {context_len}")
        return 2.0 * self.n_matmul_params_active + self.attn_flops_per_token(context_len)

    def train_flops_per_token(self, context_len: int = 0) -> float:
        """Forward + backward FLOPs of one token: 3x forward (no recomputation)."""
        return 3.0 * self.flops_per_token(context_len)

    def prefill_flops(self, num_tokens: int, past_len: int = 0) -> float:
        """Forward FLOPs of a causal pass over ``num_tokens`` new tokens after ``past_len``
        cached ones: token ``i`` (0-based) attends to ``past_len + i + 1`` keys."""
        if num_tokens < 0 or past_len < 0:
            raise ValueError(f"num_tokens and past_len must be >= 0, got {num_tokens}, {past_len}")
        keys = num_tokens * past_len + num_tokens * (num_tokens + 1) / 2
        return 2.0 * self.n_matmul_params_active * num_tokens + self.attn_flops_per_token(1) * keys

    # ------------------------------------------------------------------ misc
    def with_overrides(self, **kw: Any) -> "ModelDesc":
        """A copy with some fields replaced (validated like the constructor)."""
        valid = [f.name for f in fields(self)]
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise TypeError(f"ModelDesc.with_overrides: unknown field(s) {', '.join(unknown)}; "
                            f"valid fields: {', '.join(valid)}")
        return replace(self, **kw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        s = f"{self.name}: {self.n_params / 1e9:.3g}B params"
        if self.is_moe:
            s += f" ({self.n_active_params / 1e9:.3g}B active)"
        return s + f", {self.kv_bytes_per_token() / 1024:.4g} KiB KV/token (bf16)"

    @classmethod
    def from_hf_config(cls, path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
                       name: Optional[str] = None) -> "ModelDesc":
        """From a Hugging Face ``config.json`` (a directory holding one, the file, or the
        parsed dict). See :func:`from_hf_config`."""
        return from_hf_config(path_or_dict, name=name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------------- HF config.json
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


def from_hf_config(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
                   name: Optional[str] = None) -> ModelDesc:
    """A :class:`ModelDesc` from a Hugging Face ``config.json``.

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
        if not _is_int(value):
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
    try:
        return ModelDesc(
            name=name, vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
            num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter, tie_embeddings=tie,
            num_experts=num_experts, experts_per_token=top_k, moe_intermediate_size=moe_inter,
            shared_expert_intermediate_size=shared_inter, num_dense_layers=dense_layers,
            qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm, max_position_embeddings=max_pos)
    except ModelConfigError as e:
        raise ModelConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------------- presets
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

BUILTIN_MODELS = ("builtin-teacher", "builtin-student")


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
    try:
        from asyncopd.models import presets as _presets  # lazy: that module may still change
        from asyncopd.task import CharCodec
    except ImportError as e:
        raise ModelConfigError(f"builtin model {preset_name!r}: cannot import its description "
                               f"({e}); asyncopd.models.presets and asyncopd.task are needed") from None
    table = getattr(_presets, "PRESETS", None) or {
        p.name: p for p in (getattr(_presets, "TEACHER", None), getattr(_presets, "STUDENT", None))
        if p is not None}
    key = preset_name.strip().lower()
    preset = table.get(key)
    if preset is None:
        raise UnknownModelError(f"unknown builtin model {preset_name!r}; valid: "
                                f"{', '.join(sorted(table))}")
    a = preset.arch
    try:
        hidden, heads = a.hidden_size, a.num_attention_heads
        return ModelDesc(
            name=preset.name, vocab_size=CharCodec().vocab_size, hidden_size=hidden,
            num_layers=a.num_hidden_layers, num_heads=heads,
            num_kv_heads=a.num_key_value_heads,
            head_dim=getattr(a, "head_dim", None) or hidden // heads,
            intermediate_size=a.intermediate_size,
            tie_embeddings=bool(getattr(a, "tie_word_embeddings", True)),
            max_position_embeddings=int(getattr(a, "max_position_embeddings", 0) or 0))
    except AttributeError as e:
        raise ModelConfigError(f"builtin model {preset_name!r}: its architecture lacks a field "
                               f"({e})") from None


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


__all__ = [
    "ModelDesc", "ModelConfigError", "UnknownModelError", "MODELS", "BUILTIN_MODELS",
    "from_hf_config", "get_model", "builtin_model_desc",
]


def model_desc_for(spec: Any) -> ModelDesc:
    """The description of a config ``ModelSpec`` (``preset`` name or local ``path``)."""
    return get_model(spec.preset if spec.preset is not None else spec.path)
