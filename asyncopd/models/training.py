"""Supervised training of the built-in tiny models on the task's reference responses."""

from __future__ import annotations

import math
import random
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F

from asyncopd.models.presets import Arch, Recipe
from asyncopd.task.builtin import BuiltinTask, Problem, make_problem
from asyncopd.task.codec import CharCodec


def build_llama(arch: Arch, codec: CharCodec, *, seed: int = 0, init_std: float = 0.02):
    """A freshly initialised ``LlamaForCausalLM`` with the codec's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=codec.vocab_size,
        **arch.as_dict(),
        initializer_range=init_std,
        pad_token_id=codec.pad_id,
        bos_token_id=codec.bos_id,
        eos_token_id=codec.eos_id,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = codec.pad_id
    model.generation_config.bos_token_id = codec.bos_id
    model.generation_config.eos_token_id = codec.eos_id
    return model


class ProblemStream:
    """An endless, seeded stream of training problems (independent of the prompt-id streams)."""

    def __init__(self, task: BuiltinTask, seed: int, uniform_frac: float) -> None:
        self.task = task
        self.rng = random.Random(f"asyncopd-sft|{seed}")
        self.uniform_frac = uniform_frac
        ns = sorted(task.term_count_pmf)
        self._ns = ns
        self._ws = [task.term_count_pmf[n] for n in ns]

    def batches(self, batch_size: int, pool: int = 8):
        """Endless batches; each pool of ``pool`` batches is sorted by length (less padding)."""
        while True:
            probs = sorted((self.next() for _ in range(batch_size * pool)), key=lambda p: p.n_terms)
            chunks = [probs[i: i + batch_size] for i in range(0, len(probs), batch_size)]
            self.rng.shuffle(chunks)
            yield from chunks

    def next(self) -> Problem:
        rng = self.rng
        if rng.random() < self.uniform_frac:
            n = rng.randint(self._ns[0], self._ns[-1])
        else:
            n = rng.choices(self._ns, self._ws)[0]
        return make_problem([rng.randrange(10) for _ in range(n)])


def sft_batch(problems: list[Problem], codec: CharCodec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, mask): right-padded; mask marks target positions that are response tokens."""
    seqs, starts = [], []
    for p in problems:
        prompt = codec.encode_prompt(p.prompt_text)
        seqs.append(prompt + codec.encode(p.target_text) + [codec.eos_id])
        starts.append(len(prompt) - 1)  # index in `targets` of the first response token
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), codec.pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), codec.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        t = torch.tensor(s, dtype=torch.long)
        inputs[i, : len(s) - 1] = t[:-1]
        targets[i, : len(s) - 1] = t[1:]
        mask[i, st: len(s) - 1] = 1.0
    return inputs, targets, mask


def lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.schedule == "constant":
        return recipe.lr
    span = max(1, recipe.steps - recipe.warmup_steps)
    frac = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def teacher_forced_exact_match(model, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> float:
    """Fraction of sequences whose every response token is the argmax under teacher forcing
    (equal to greedy exact-match accuracy on those problems, for one forward pass)."""
    inputs, targets, mask = batch
    was_training = model.training
    model.eval()
    pred = model(input_ids=inputs, use_cache=False).logits.argmax(-1)
    model.train(was_training)
    wrong = ((pred != targets) & (mask > 0)).any(dim=1)
    return float(1.0 - wrong.float().mean())


def train_supervised(model, task: BuiltinTask, codec: CharCodec, recipe: Recipe, *, seed: int = 0,
                     progress: bool = True, desc: str = "training", callback=None) -> dict[str, Any]:
    """Train ``model`` in place with AdamW on reference responses; returns a small log."""
    from tqdm.auto import tqdm

    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr, betas=recipe.betas,
    )
    stream = ProblemStream(task, seed, recipe.uniform_length_frac)
    batches = stream.batches(recipe.batch_size)
    check = None
    if recipe.stop_accuracy is not None:
        check = sft_batch(task.problems(recipe.check_prompts, "sft-check"), codec)
    t0 = time.perf_counter()
    losses: list[float] = []
    checks: list[tuple[int, float]] = []
    stopped_at = recipe.steps
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(range(recipe.steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        ema: Optional[float] = None
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, recipe)
            inputs, targets, mask = sft_batch(next(batches), codec)
            # Right padding + causal attention: real positions never see the padding, so no mask.
            logits = model(input_ids=inputs, use_cache=False).logits
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            loss = (nll * mask.reshape(-1)).sum() / mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            v = float(loss.detach())
            losses.append(v)
            ema = v if ema is None else 0.95 * ema + 0.05 * v
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{ema:.3f}", acc="-" if not checks else f"{checks[-1][1]:.2f}")
            if callback is not None:
                callback(step, v)
            if check is not None and (step + 1) % recipe.check_every == 0:
                acc = teacher_forced_exact_match(model, check)
                checks.append((step + 1, acc))
                if acc >= recipe.stop_accuracy and step + 1 >= recipe.min_steps:
                    stopped_at = step + 1
                    break
        bar.close()
    model.eval()
    return {"steps": stopped_at, "train_seconds": round(time.perf_counter() - t0, 2),
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "check_accuracy": checks[-1][1] if checks else None, "checks": checks}
