"""The built-in synthetic reasoning task: a running sum mod 10 with a labelled chain of thought.

Problem
    ``n`` digits ``d_1 .. d_n`` (``min_terms <= n <= max_terms``), each tagged with a step
    label (``a``, ``b``, ..., ``z``, ``A``, ..., ``Z``)::

        prompt_text  = "a3b7c2d9="

Reference response (the teacher's target, written without EOS)
    one 3-token step per term: the label, the term's digit (copied from the prompt) and the
    running sum ``s_i = (d_1 + ... + d_i) mod 10``; then the answer marker ``>`` and the
    final digit ``s_n``::

        target_text  = "a33b70c22d91>1"      (3, 3+7=10 -> 0, 0+2=2, 2+9=11 -> 1)

    On the wire the response is ``encode(target_text) + [EOS]``: ``3n + 3`` tokens with the
    character codec (the prompt, BOS included, is ``2n + 2``), so the term count ``n`` sets
    the response length: with the default config 9..45 tokens, mean about 19.

Correctness (``BuiltinTask.is_correct``)
    exact match: the response text, cut at the first EOS and stripped of special tokens, must
    equal ``target_text``, i.e. every intermediate sum *and* the final answer must be right and
    the chain must be well-formed. A well-formed response with random digits is right with
    probability ``10**-(2n+1)``, so chance-level accuracy is ~0. ``BuiltinTask.grade`` also reports the
    looser "final answer right" and "well-formed chain" checks, for diagnostics.

Why this format? It was chosen so that tiny models on a 2-core CPU learn it in well under
a minute, while errors still compound with length. The labels make "which input digit comes
next" a content lookup (find the label in the prompt, read the digit after it; an induction
head) instead of positional arithmetic. Writing the copied digit before the sum gives that
lookup its own supervision, which shortens the plateau of the mod-10 addition (an XOR-like
function: neither input alone says anything about the output) from thousands of steps to a
few hundred. Long problems are both slower *and* harder (every step must be right), which
is what an asynchronous pipeline's staleness study needs.

Term-count distribution (``TaskConfig.length_skew`` = ``s``)
    ``P(n = min_terms + k)`` is proportional to ``exp(-lambda * k)`` for
    ``k = 0 .. max_terms - min_terms``, with ``lambda = 8 * s / (max_terms - min_terms)``:
    ``s = 0`` is uniform, larger ``s`` is a truncated geometric with a long tail
    (``s = 1``: the mean sits about 1/8 of the way from ``min_terms`` to ``max_terms``).

Determinism
    ``problem(prompt_id, split)`` depends only on ``(cfg, seed, split, prompt_id)``: each
    problem has its own ``random.Random`` seeded from a BLAKE2 digest of those values (no
    global RNG, no Python ``hash``), so the trainer, the simulator and a resumed run all map
    a prompt id to the same problem. The split name is part of the digest, so the ``eval``
    split is an independent stream from ``train`` (a short problem may still occur in both by
    coincidence: there are only 10 one-digit and 100 two-digit prompts).

Pure Python: no torch import (the simulator uses this module).
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from asyncopd.task.codec import CharCodec
from asyncopd.task.config import TaskConfig

LABELS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROMPT_END = "="
ANSWER_MARK = ">"
MAX_TERMS = len(LABELS)
TASK_VERSION = "running_sum/v2"  # bump when the mapping prompt_id -> problem or the text format changes


@dataclass(frozen=True)
class Problem:
    prompt_id: int
    split: str
    digits: tuple[int, ...]
    prompt_text: str
    target_text: str  # the reference response, without EOS
    answer: str  # the final digit, as text

    @property
    def n_terms(self) -> int:
        return len(self.digits)


@dataclass(frozen=True)
class Grade:
    correct: bool  # exact match of the whole response (the task's metric)
    answer_correct: bool  # text after the last answer marker equals the answer
    well_formed: bool  # labels, one digit per step and "><digit>" at the end, nothing else


def make_problem(digits: tuple[int, ...] | list[int], prompt_id: int = -1, split: str = "") -> Problem:
    """The problem (prompt, reference response, answer) for the given input digits."""
    digits = tuple(int(d) for d in digits)
    if not 1 <= len(digits) <= MAX_TERMS:
        raise ValueError(f"running_sum: 1..{MAX_TERMS} digits, got {len(digits)}")
    if any(not 0 <= d <= 9 for d in digits):
        raise ValueError(f"running_sum: digits must be 0..9, got {digits}")
    prompt = "".join(f"{LABELS[i]}{d}" for i, d in enumerate(digits)) + PROMPT_END
    s, steps = 0, []
    for i, d in enumerate(digits):
        s = (s + d) % 10
        steps.append(f"{LABELS[i]}{d}{s}")
    answer = str(s)
    return Problem(prompt_id=prompt_id, split=split, digits=digits, prompt_text=prompt,
                   target_text="".join(steps) + ANSWER_MARK + answer, answer=answer)


def response_tokens_for(n_terms: int) -> int:
    """Character-codec tokens of the reference response for ``n_terms`` digits, EOS included."""
    return 3 * n_terms + 3


def prompt_tokens_for(n_terms: int) -> int:
    """Character-codec tokens of the prompt for ``n_terms`` digits, BOS included."""
    return 2 * n_terms + 2


class BuiltinTask:
    """The running-sum task for one ``(cfg, seed)``; maps prompt ids to problems."""

    def __init__(self, cfg: Optional[TaskConfig] = None, seed: int = 0) -> None:
        self.cfg = cfg if cfg is not None else TaskConfig()
        if self.cfg.max_terms > MAX_TERMS:
            raise ValueError(f"task.max_terms: at most {MAX_TERMS} (step labels a-z, A-Z), got {self.cfg.max_terms}")
        self.seed = int(seed)
        self.codec = CharCodec()

    # ------------------------------------------------------------------ distribution
    @cached_property
    def term_count_pmf(self) -> dict[int, float]:
        """Exact distribution of the term count ``n``."""
        lo, hi, s = self.cfg.min_terms, self.cfg.max_terms, self.cfg.length_skew
        lam = 8.0 * s / (hi - lo) if hi > lo else 0.0
        w = [math.exp(-lam * k) for k in range(hi - lo + 1)]
        z = sum(w)
        return {lo + k: wk / z for k, wk in enumerate(w)}

    @cached_property
    def _cdf(self) -> tuple[list[int], list[float]]:
        ns = sorted(self.term_count_pmf)
        acc, cdf = 0.0, []
        for n in ns:
            acc += self.term_count_pmf[n]
            cdf.append(acc)
        cdf[-1] = 1.0
        return ns, cdf

    def response_length_pmf(self) -> dict[int, float]:
        """Exact distribution of reference response lengths (tokens, EOS included)."""
        return {response_tokens_for(n): p for n, p in self.term_count_pmf.items()}

    def prompt_length_pmf(self) -> dict[int, float]:
        """Exact distribution of prompt lengths (tokens, BOS included)."""
        return {prompt_tokens_for(n): p for n, p in self.term_count_pmf.items()}

    def mean_response_tokens(self) -> float:
        return sum(k * p for k, p in self.response_length_pmf().items())

    def mean_prompt_tokens(self) -> float:
        return sum(k * p for k, p in self.prompt_length_pmf().items())

    @property
    def max_response_tokens(self) -> int:
        return response_tokens_for(self.cfg.max_terms)

    @property
    def max_prompt_tokens(self) -> int:
        return prompt_tokens_for(self.cfg.max_terms)

    # ------------------------------------------------------------------ problems
    def _rng(self, prompt_id: int, split: str) -> random.Random:
        key = f"{TASK_VERSION}|{self.cfg.name}|{self.seed}|{split}|{int(prompt_id)}".encode()
        return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big"))

    def problem(self, prompt_id: int, split: str = "train") -> Problem:
        """The problem for ``prompt_id`` in ``split``; a pure function of (cfg, seed, split, id)."""
        if prompt_id < 0:
            raise ValueError(f"prompt_id must be >= 0, got {prompt_id}")
        rng = self._rng(prompt_id, split)
        ns, cdf = self._cdf
        n = ns[min(bisect_left(cdf, rng.random()), len(ns) - 1)]
        digits = tuple(rng.randrange(10) for _ in range(n))
        return make_problem(digits, prompt_id=prompt_id, split=split)

    def problems(self, n: int, split: str = "train", start: int = 0) -> list[Problem]:
        return [self.problem(i, split) for i in range(start, start + n)]

    def eval_problems(self, n: Optional[int] = None) -> list[Problem]:
        """The held-out set: prompt ids ``0 .. n-1`` (default ``cfg.eval_prompts``) of split ``eval``."""
        return self.problems(self.cfg.eval_prompts if n is None else n, "eval")

    # ------------------------------------------------------------------ grading
    @staticmethod
    def _clean(response_text: str) -> str:
        # Tolerate callers that decoded with special tokens kept.
        for tok in ("<eos>",):
            if tok in response_text:
                response_text = response_text[: response_text.index(tok)]
        return response_text.replace("<bos>", "").replace("<pad>", "")

    def is_correct(self, problem: Problem, response_text: str) -> bool:
        """Exact match of the whole response (cut at EOS) with ``problem.target_text``."""
        return self._clean(response_text) == problem.target_text

    def grade(self, problem: Problem, response_text: str) -> Grade:
        text = self._clean(response_text)
        correct = text == problem.target_text
        head, mark, tail = text.rpartition(ANSWER_MARK)
        answer_correct = bool(mark) and tail == problem.answer
        n = problem.n_terms
        well_formed = (
            bool(mark) and len(tail) == 1 and tail.isdigit() and len(head) == 3 * n
            and all(head[3 * i] == LABELS[i] and head[3 * i + 1: 3 * i + 3].isdigit() for i in range(n))
        )
        return Grade(correct=correct, answer_correct=answer_correct, well_formed=well_formed)

    # ------------------------------------------------------------------ lengths (simulator)
    def reference_response_lengths(self, n: int, seed: Optional[int] = None, split: str = "train") -> list[int]:
        """Token counts (EOS included) of the reference responses of prompt ids ``0 .. n-1``.

        ``seed``: the task seed to draw with (default: this task's seed)."""
        task = self if seed is None or int(seed) == self.seed else BuiltinTask(self.cfg, int(seed))
        return [len(task.codec.encode(p.target_text)) + 1 for p in task.problems(n, split)]

    def prompt_token_lengths(self, n: int, seed: Optional[int] = None, split: str = "train") -> list[int]:
        """Token counts (BOS included) of the prompts of prompt ids ``0 .. n-1``."""
        task = self if seed is None or int(seed) == self.seed else BuiltinTask(self.cfg, int(seed))
        return [len(task.codec.encode_prompt(p.prompt_text)) for p in task.problems(n, split)]

    def __repr__(self) -> str:
        c = self.cfg
        return (f"BuiltinTask(running_sum, terms={c.min_terms}..{c.max_terms}, skew={c.length_skew}, "
                f"seed={self.seed})")
