"""Small shims over differences between transformers releases.

The torch backend supports transformers >= 4.56 (including the 5.x line). The differences
that matter here:

- The KV-cache argument of ``forward`` and the matching attribute of its output are called
  ``past_key_values`` up to 4.x and ``cache`` in 5.x. :func:`cache_kwarg` looks at the
  signature of ``model.forward`` once per model class and answers which one to use;
  :func:`output_cache` reads the returned cache from either attribute.
- ``logits_to_keep`` (compute the LM head only for the last N positions) is a ``forward``
  argument of most causal LMs in these releases, but not of every custom model; callers ask
  :func:`supports_logits_to_keep` before passing it.
- ``Cache.batch_select_indices`` (drop rows of a dynamic KV cache) exists on ``DynamicCache``;
  other cache types (linear-attention/recurrent layers, quantised caches) may not support it.
  :func:`cache_select_rows` tries it and reports whether the rows were dropped.
- Continuous batching joins new rows to a running batch and drops leading columns no row
  attends to; transformers has no API for either, so :func:`cache_join_rows` and
  :func:`cache_drop_columns` edit the per-layer ``keys``/``values`` tensors ``[batch, heads, T,
  head_dim]`` of a full-attention dynamic cache directly, and refuse (return False) on anything
  else (sliding-window, recurrent, quantised or offloaded layers).
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=None)
def _forward_params(model_cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(model_cls.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return frozenset()


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    """The model a ``DistributedDataParallel`` wrapper runs (its ``forward`` passes keywords on)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache keyword argument of ``model.forward`` (``cache`` or ``past_key_values``)."""
    params = _forward_params(type(_inner(model)))
    if "cache" in params:
        return "cache"
    return "past_key_values"


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in _forward_params(type(_inner(model)))


def output_cache(output: Any) -> Any:
    """The KV cache returned by a forward pass, whatever the release calls it."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    if cache is None:
        raise RuntimeError(
            "the model returned no KV cache (neither `cache` nor `past_key_values`); "
            "was use_cache=True honoured?"
        )
    return cache


def cache_select_rows(cache: Any, rows: torch.Tensor) -> bool:
    """Keep only ``rows`` (batch indices) of ``cache`` in place. Returns False, leaving the cache
    untouched, when this cache type cannot do that (the caller then keeps the rows and ignores
    them)."""
    fn = getattr(cache, "batch_select_indices", None)
    if fn is None:
        return False
    layers = getattr(cache, "layers", None)
    if layers is not None and not all(hasattr(layer, "batch_select_indices") for layer in layers):
        return False
    try:
        fn(rows)
    except (NotImplementedError, AttributeError, ValueError):
        return False
    return True


def editable_layers(cache: Any) -> list[Any] | None:
    """The layers of a full-attention dynamic cache whose ``keys``/``values`` may be edited, or None."""
    layers = getattr(cache, "layers", None)
    if not layers or getattr(cache, "offloading", False):
        return None
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if (getattr(layer, "is_sliding", True) or not isinstance(keys, torch.Tensor)
                or not isinstance(values, torch.Tensor) or keys.dim() != 4 or values.dim() != 4):
            return None
    return list(layers)


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def cache_join_rows(cache: Any, other: Any) -> bool:
    """Append the rows of ``other`` to ``cache`` in place (rows of ``cache`` first), left-padding the
    shorter one's positions with zeros (the caller left-pads the attention masks the same way, so
    the padding is never attended). False, both untouched, when either cannot be edited."""
    mine, theirs = editable_layers(cache), editable_layers(other)
    if mine is None or theirs is None or len(mine) != len(theirs):
        return False
    for a, b in zip(mine, theirs):
        width = max(a.keys.shape[2], b.keys.shape[2])
        a.keys = torch.cat([pad_left(a.keys, width, 2), pad_left(b.keys, width, 2)])
        a.values = torch.cat([pad_left(a.values, width, 2), pad_left(b.values, width, 2)])
    return True


def cache_drop_columns(cache: Any, n: int) -> bool:
    """Drop the first ``n`` positions of every row in place (columns no row attends to). False,
    untouched, when the cache cannot be edited."""
    layers = editable_layers(cache)
    if layers is None:
        return False
    for layer in layers:
        layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]
    return True


def output_vocab_size(model: torch.nn.Module) -> int:
    """Number of logits the model produces per position (the LM head's rows, which can exceed
    the tokenizer's vocabulary when the embedding matrix is padded)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text_config.vocab_size)


def model_forward(
    model: torch.nn.Module,
    *,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
    use_cache: bool = False,
    logits_to_keep: int = 0,
) -> tuple[torch.Tensor, Any]:
    """Call ``model`` with the keyword names this transformers release expects.

    Returns ``(logits, cache)``: ``logits`` is ``[batch, n, vocab]`` with ``n = logits_to_keep``
    (the last ``n`` positions) when that is positive, else all positions; ``cache`` is the
    returned KV cache when ``use_cache`` else ``None``.
    """
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "use_cache": use_cache,
    }
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if cache is not None:
        kwargs[cache_kwarg(model)] = cache
    keep = int(logits_to_keep)
    if keep > 0 and supports_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    output = model(**kwargs)
    logits = output.logits
    if keep > 0 and logits.shape[1] > keep:
        logits = logits[:, -keep:]
    return logits, (output_cache(output) if use_cache else None)
