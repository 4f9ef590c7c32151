"""Teacher scoring: one batched prefill, a small top-k payload per response position.

For an item ``(sample_id, prompt_ids, response_ids)`` with prompt length ``P`` and response
length ``T``, the sequence ``x = prompt_ids + response_ids`` is scored in one forward pass; the
logits at position ``P + t - 1`` predict response token ``t`` (``t = 0 .. T-1``). At each such
position the teacher distribution is ``log p_T = log_softmax(logits)`` over the full output
vocabulary, in float32, and the payload holds

- ``topk_ids[t]``, ``topk_logprobs[t]``: the ``k`` largest ``log p_T`` and their ids, descending
  (``torch.topk``; ties broken as it breaks them);
- ``sampled_logprob[t] = log p_T(response_ids[t])``.

Shapes ``[T, k]`` (int32 / float32) and ``[T]`` (float32); an empty response gives ``T = 0``.
The teacher uses plain ``log_softmax`` (temperature 1, no truncation): it is the target
distribution, not a sampler.

Batching: items are right-padded into one batch with an attention mask (positions count from 0
in every row, as for an unpadded sequence), so an item's payload does not depend on the batch it
is scored in. Only the logits of the last ``L - min(P) + 1`` positions are computed when the model
supports ``logits_to_keep`` (prompt-only positions are not needed).

``top_k`` is validated once against the model's output vocabulary: ``top_k > V`` raises
``ValueError`` instead of silently clamping, since the payload's shape is a contract the learner and
the cache-size accounting rely on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asyncopd.backends.base import TeacherPayload
from asyncopd.backends.torch_backend import compat


class TorchTeacherScorer:
    """``TeacherScorer`` over a transformers causal LM.

    Args:
        model: the teacher; moved to ``device`` and put in eval mode.
        top_k: ids per position in the payload, ``1 <= top_k <= vocab``.
        pad_id: id used for right padding (never attended to).
        device: where the model runs.
    """

    def __init__(self, model: Any, *, top_k: int, pad_id: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.eval()
        self.vocab_size = compat.output_vocab_size(self.model)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k > self.vocab_size:
            raise ValueError(
                f"top_k={top_k} exceeds the teacher's output vocabulary ({self.vocab_size} logits per "
                f"position); use top_k <= {self.vocab_size}"
            )
        self.top_k = int(top_k)
        self.pad_id = int(pad_id)

    def _empty(self, sample_id: int) -> TeacherPayload:
        k = self.top_k
        return TeacherPayload(
            sample_id=sample_id,
            topk_ids=np.zeros((0, k), dtype=np.int32),
            topk_logprobs=np.zeros((0, k), dtype=np.float32),
            sampled_logprob=np.zeros((0,), dtype=np.float32),
        )

    def score(self, items: list[tuple[int, list[int], list[int]]]) -> list[TeacherPayload]:
        """Payloads for ``items`` in order; one forward pass over all items with a response."""
        out: list[TeacherPayload | None] = [None] * len(items)
        todo = []
        for j, (sid, prompt, response) in enumerate(items):
            if not prompt:
                raise ValueError(f"sample {sid}: empty prompt (the first response token needs a context)")
            if response:
                todo.append(j)
            else:
                out[j] = self._empty(sid)
        if todo:
            with torch.inference_mode():
                self._score_batch(items, todo, out)
        return out  # type: ignore[return-value]

    def _score_batch(self, items: list[tuple[int, list[int], list[int]]], todo: list[int], out: list) -> None:
        seqs = [list(items[j][1]) + list(items[j][2]) for j in todo]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        min_prompt = min(len(items[j][1]) for j in todo)
        keep = width - min_prompt + 1  # logits of positions >= min_prompt - 1
        logits, _ = compat.model_forward(
            self.model,
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            logits_to_keep=keep,
        )
        offset = width - logits.shape[1]  # absolute position of logits[:, 0]
        k = self.top_k
        for r, j in enumerate(todo):
            sid, prompt, response = items[j]
            start = len(prompt) - 1 - offset
            row = logits[r, start : start + len(response)]
            logp = torch.log_softmax(row.float(), dim=-1)
            top_lp, top_ids = torch.topk(logp, k, dim=-1)
            target = torch.as_tensor(list(response), dtype=torch.long, device=logp.device)
            sampled = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            out[j] = TeacherPayload(
                sample_id=sid,
                topk_ids=top_ids.to(torch.int32).cpu().numpy(),
                topk_logprobs=top_lp.cpu().numpy().astype(np.float32, copy=False),
                sampled_logprob=sampled.cpu().numpy().astype(np.float32, copy=False),
            )
