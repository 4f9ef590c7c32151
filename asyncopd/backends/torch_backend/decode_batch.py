"""The tensors of a running decode batch, and the per-sequence state behind each of its rows.

A batch is ``logits [B, V]`` (each row's next-token logits), a KV cache, an attention ``mask [B,
T+1]`` grown by one column per decode step, and ``next_pos [B]`` (each row's next position id).
Rows are left-padded: row ``r``'s real tokens are the last ones of its mask, and position ids
count from its own first real token, so a row's logits do not depend on the other rows.

Continuous batching changes the rows while the batch runs:

- **join** (``join``): new sequences are prefilled on their own and appended; the shorter of the
  two caches (and masks) is left-padded with masked zeros to the longer one's width;
- **leave** (``keep``): rows that finished are dropped from the cache, mask and positions;
- **trim** (``trim``): leading columns that no row attends to (all-zero mask columns, left by
  rows that left or by a join's padding) are dropped, so the attention width stays the longest
  live row's context instead of growing with the batch's age. Masked positions contribute
  ``exp(-inf) = 0`` to attention, so dropping them leaves every row's logits unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from asyncopd.backends.base import GenRequest
from asyncopd.backends.torch_backend import compat


@dataclass
class DecodeSeq:
    """One request in flight: what it sampled so far and, once ended, how."""

    req: GenRequest
    started: float
    response: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    cap_k: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per token: (ids, log mu)
    cap_mc: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    outcome: Optional[tuple[str, str, str, float]] = None  # status, finish reason, abort reason, time
    handed: bool = False  # its result was passed on

    def end(self, status: str, finish_reason: str, abort_reason: str, at: float) -> None:
        if self.outcome is None:
            self.outcome = (status, finish_reason, abort_reason, at)

    @property
    def context(self) -> list[int]:
        return list(self.req.prompt_ids) + self.response


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` for ``seqs``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


class DecodeBatch:
    """Rows ``seqs[r]`` with their tensors (module docstring). ``forward(ids, mask, positions,
    cache) -> (last logits [B, V], cache)`` is the model call; ``stats["prefill_tokens"]`` counts
    the tokens it prefills."""

    def __init__(self, seqs: list[DecodeSeq], forward: Any, pad_id: int, device: torch.device,
                 stats: dict[str, int]) -> None:
        self.forward, self.pad_id, self.device, self.stats = forward, pad_id, device, stats
        self.seqs = seqs
        self.logits, self.cache, self.mask, self.next_pos = self._prefill(seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def _prefill(self, seqs: list[DecodeSeq]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        contexts = [s.context for s in seqs]
        tok, mask, pos = left_pad(contexts, self.pad_id, self.device)
        self.stats["prefill_tokens"] += sum(len(c) for c in contexts)
        logits, cache = self.forward(tok, mask, pos, None)
        return logits, cache, mask, pos[:, -1] + 1

    def recompute(self) -> None:
        """Rebuild the cache of every row from its prompt and tokens so far (new weights)."""
        self.logits, self.cache, self.mask, self.next_pos = self._prefill(self.seqs)

    def join(self, seqs: list[DecodeSeq]) -> bool:
        """Prefill ``seqs`` and append them as rows; False (nothing done) when the cache type
        cannot take rows mid-flight (``compat.cache_join_rows``)."""
        if compat.editable_layers(self.cache) is None:
            return False
        logits, cache, mask, next_pos = self._prefill(seqs)
        if not compat.cache_join_rows(self.cache, cache):
            return False
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([compat.pad_left(self.mask, width, 1), compat.pad_left(mask, width, 1)])
        self.logits = torch.cat([self.logits, logits])
        self.next_pos = torch.cat([self.next_pos, next_pos])
        self.seqs = self.seqs + seqs
        return True

    def keep(self, rows: list[int], tok: torch.Tensor) -> tuple[bool, torch.Tensor]:
        """Keep only ``rows`` (their last tokens ``tok[rows]``); False when the cache cannot drop
        rows (the caller then keeps them and ignores their outputs)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        if not compat.cache_select_rows(self.cache, index):
            return False, tok
        self.seqs = [self.seqs[r] for r in rows]
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        return True, tok[index]

    def trim(self) -> None:
        """Drop the leading columns no row attends to (module docstring)."""
        first = int(self.mask.any(0).to(torch.int8).argmax())
        if first > 0 and compat.cache_drop_columns(self.cache, first):
            self.mask = self.mask[:, first:]

    def step(self, tok: torch.Tensor) -> None:
        """One decode step: feed each row's last sampled token."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        self.logits, self.cache = self.forward(tok.unsqueeze(-1), self.mask, self.next_pos.unsqueeze(-1), self.cache)
        self.next_pos = self.next_pos + 1
