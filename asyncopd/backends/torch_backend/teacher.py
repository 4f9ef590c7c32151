"""Teacher scoring: one batched prefill, a small top-k payload per response position.

For an item ``(sample_id, prompt_ids, response_ids)`` with prompt length ``P`` and response
length ``T``, the sequence ``x = prompt_ids + response_ids`` is scored in one forward pass; the
logits at position ``P + t - 1`` predict response token ``t`` (``t = 0 .. T-1``). At each such
position the teacher distribution is ``log p_T = log_softmax(logits)`` over the full output
vocabulary, in float32, and the payload holds

- ``topk_ids[t]``, ``topk_logprobs[t]``: the ``k`` largest ``log p_T`` and their ids, descending
  (``torch.topk``; ties broken as it breaks them);
- ``sampled_logprob[t] = log p_T(response_ids[t])``;
- when the request carries ``query_ids`` ``[T, Q]``: ``query_logprobs[t] = log p_T`` at them;
- with ``num_samples = M > 0``: ``sample_ids[t]``, ``M`` ids drawn independently from ``p_T``
  (a seeded generator of the scorer's own), and ``sample_logprobs[t]`` at them;
- with ``full_vocab``: ``full_logprobs[t]``, the whole ``log p_T`` row (dense reference only).

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

from asyncopd.backends.base import ScoreRequest, TeacherPayload
from asyncopd.backends.torch_backend import compat


class TorchTeacherScorer:
    """``TeacherScorer`` over a transformers causal LM.

    Args:
        model: the teacher; moved to ``device`` and put in eval mode.
        top_k: ids per position in the payload, ``1 <= top_k <= vocab``.
        pad_id: id used for right padding (never attended to).
        num_samples: ids drawn from ``p_T`` per position (0: none).
        full_vocab: also return the full ``log p_T`` rows (the dense reference; ``[T, V]`` floats).
        seed: seeds the generator of the teacher's draws.
        device: where the model runs.
    """

    def __init__(self, model: Any, *, top_k: int, pad_id: int, num_samples: int = 0, full_vocab: bool = False,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
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
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.full_vocab = bool(full_vocab)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def _empty(self, item: ScoreRequest) -> TeacherPayload:
        k, m = self.top_k, self.num_samples
        q = None if item.query_ids is None else np.asarray(item.query_ids).shape[-1]
        return TeacherPayload(
            sample_id=item.sample_id,
            topk_ids=np.zeros((0, k), dtype=np.int32),
            topk_logprobs=np.zeros((0, k), dtype=np.float32),
            sampled_logprob=np.zeros((0,), dtype=np.float32),
            query_ids=None if q is None else np.zeros((0, q), dtype=np.int32),
            query_logprobs=None if q is None else np.zeros((0, q), dtype=np.float32),
            sample_ids=np.zeros((0, m), dtype=np.int32) if m else None,
            sample_logprobs=np.zeros((0, m), dtype=np.float32) if m else None,
            full_logprobs=np.zeros((0, self.vocab_size), dtype=np.float32) if self.full_vocab else None,
        )

    def score(self, items: list[ScoreRequest]) -> list[TeacherPayload]:
        """Payloads for ``items`` in order; one forward pass over all items with a response."""
        out: list[TeacherPayload | None] = [None] * len(items)
        todo = []
        for j, it in enumerate(items):
            if not it.prompt_ids:
                raise ValueError(f"sample {it.sample_id}: empty prompt (the first response token needs a context)")
            if it.query_ids is not None:
                q = np.asarray(it.query_ids)
                if q.ndim != 2 or q.shape[0] != len(it.response_ids):
                    raise ValueError(f"sample {it.sample_id}: query_ids must be [T={len(it.response_ids)}, Q], "
                                     f"got shape {q.shape}")
                if q.size and (q.min() < 0 or q.max() >= self.vocab_size):
                    raise ValueError(f"sample {it.sample_id}: query_ids outside the vocabulary [0, {self.vocab_size})")
            if it.response_ids:
                todo.append(j)
            else:
                out[j] = self._empty(it)
        if todo:
            with torch.inference_mode():
                self._score_batch(items, todo, out)
        return out  # type: ignore[return-value]

    def _score_batch(self, items: list[ScoreRequest], todo: list[int], out: list) -> None:
        seqs = [list(items[j].prompt_ids) + list(items[j].response_ids) for j in todo]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        min_prompt = min(len(items[j].prompt_ids) for j in todo)
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
            it = items[j]
            start = len(it.prompt_ids) - 1 - offset
            row = logits[r, start : start + len(it.response_ids)]
            logp = torch.log_softmax(row.float(), dim=-1)
            top_lp, top_ids = torch.topk(logp, k, dim=-1)
            target = torch.as_tensor(list(it.response_ids), dtype=torch.long, device=logp.device)
            sampled = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            pay = TeacherPayload(sample_id=it.sample_id, topk_ids=_ids(top_ids), topk_logprobs=_floats(top_lp),
                                 sampled_logprob=_floats(sampled))
            if it.query_ids is not None:
                q = torch.as_tensor(np.array(it.query_ids), dtype=torch.long, device=logp.device)  # (a writable copy)
                pay.query_ids, pay.query_logprobs = _ids(q), _floats(logp.gather(-1, q))
            if self.num_samples:
                draws = torch.multinomial(logp.exp(), self.num_samples, replacement=True, generator=self.generator)
                pay.sample_ids, pay.sample_logprobs = _ids(draws), _floats(logp.gather(-1, draws))
            if self.full_vocab:
                pay.full_logprobs = _floats(logp)
            out[j] = pay


def _ids(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.int32).cpu().numpy()


def _floats(x: torch.Tensor) -> np.ndarray:
    return x.float().cpu().numpy().astype(np.float32, copy=False)
