"""Greedy-decoding accuracy of a causal LM on the built-in task (batched, left-padded, KV cache)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from asyncopd.task.builtin import BuiltinTask, Problem
from asyncopd.task.codec import TextCodec


@dataclass
class EvalResult:
    accuracy: float  # exact match (the task's metric)
    answer_accuracy: float  # final answer right
    well_formed: float  # fraction with a well-formed chain
    eos_rate: float  # fraction that ended with EOS within max_new_tokens
    mean_response_tokens: float  # generated tokens per response, EOS included
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def greedy_generate(model, codec: TextCodec, prompts: list[str], *, batch_size: int = 100,
                    max_new_tokens: int = 64) -> list[list[int]]:
    """Greedy responses (token ids, cut after the first EOS, EOS kept) for ``prompts``."""
    device = next(model.parameters()).device
    pad = codec.pad_id
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(prompts), batch_size):
            enc = [codec.encode_prompt(p) for p in prompts[b: b + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            att = torch.zeros((len(enc), width), dtype=torch.long)
            for i, e in enumerate(enc):
                ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
                att[i, width - len(e):] = 1
            gen = model.generate(
                input_ids=ids.to(device), attention_mask=att.to(device), do_sample=False,
                max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=codec.eos_id,
                num_beams=1, use_cache=True,
            )
            for row in gen[:, width:].tolist():
                if codec.eos_id in row:
                    row = row[: row.index(codec.eos_id) + 1]
                out.append(row)
    finally:
        model.train(was_training)
    return out


def evaluate(model, codec: TextCodec, task: BuiltinTask, *, n: Optional[int] = None, split: str = "eval",
             batch_size: int = 100, max_new_tokens: Optional[int] = None,
             problems: Optional[list[Problem]] = None) -> EvalResult:
    """Greedy exact-match accuracy on prompt ids ``0 .. n-1`` of ``split`` (default n: cfg.eval_prompts)."""
    if problems is None:
        problems = task.problems(task.cfg.eval_prompts if n is None else n, split)
    if max_new_tokens is None:
        max_new_tokens = task.max_response_tokens + 4
    responses = greedy_generate(model, codec, [p.prompt_text for p in problems],
                                batch_size=batch_size, max_new_tokens=max_new_tokens)
    correct = answer = formed = eos = 0
    tokens = 0
    for p, r in zip(problems, responses):
        g = task.grade(p, codec.decode(r))
        correct += g.correct
        answer += g.answer_correct
        formed += g.well_formed
        eos += bool(r) and r[-1] == codec.eos_id
        tokens += len(r)
    m = max(1, len(problems))
    return EvalResult(accuracy=correct / m, answer_accuracy=answer / m, well_formed=formed / m,
                      eos_rate=eos / m, mean_response_tokens=tokens / m, n=len(problems))


def evaluate_accuracy(model, codec: TextCodec, task: BuiltinTask, n: Optional[int] = None, split: str = "eval",
                      batch_size: int = 100, max_new_tokens: Optional[int] = None) -> float:
    """Greedy exact-match accuracy (see :func:`evaluate` for the other statistics)."""
    return evaluate(model, codec, task, n=n, split=split, batch_size=batch_size,
                    max_new_tokens=max_new_tokens).accuracy
