"""Architecture descriptions of decoder-only LMs, for the simulator's analytic cost models.

A :class:`ModelDesc` holds the hyper-parameters that decide cost: parameter counts (total
and active per token), weight bytes, KV-cache bytes per token and FLOPs per token. Build
one from a preset (``asyncopd.catalog.model_presets``: ``MODELS``, ``get_model``), from a
local Hugging Face ``config.json`` (:func:`from_hf_config`, parsed by
``asyncopd.catalog.hf_config``), or for the built-in tiny models (``builtin_model_desc``).

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

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping, Optional, Union

from asyncopd.catalog.errors import ModelConfigError
from asyncopd.catalog.hf_config import hf_config_fields, is_int
from asyncopd.catalog.record import CatalogRecord


@dataclass(frozen=True)
class ModelDesc(CatalogRecord):
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
            if not is_int(v) or v < 1:
                raise ModelConfigError(f"model {n!r}: {f} must be a positive integer, got {v!r}")
        for f in ("intermediate_size", "num_experts", "experts_per_token", "moe_intermediate_size",
                  "shared_expert_intermediate_size", "num_dense_layers", "max_position_embeddings"):
            v = getattr(self, f)
            if not is_int(v) or v < 0:
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
        fields_, where = hf_config_fields(path_or_dict, name)
        try:
            return cls(**fields_)
        except ModelConfigError as e:
            raise ModelConfigError(f"{where}: {e}") from None


def from_hf_config(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
                   name: Optional[str] = None) -> ModelDesc:
    """A :class:`ModelDesc` from a Hugging Face ``config.json`` (see ``hf_config_fields``).

    Missing keys raise :class:`ModelConfigError` naming the file and the key."""
    return ModelDesc.from_hf_config(path_or_dict, name=name)
