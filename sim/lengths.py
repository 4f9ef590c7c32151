"""Response and prompt lengths for simulated samples (``sim.response_length``).

- ``task``: the built-in task's reference response for that very prompt id, so a simulated
  run and a real run of the same config see the same prompts;
- ``fixed``: always ``max``;
- ``lognormal``: mean ``m`` and coefficient of variation ``cv``, rounded, clipped to [1, max]::

      sigma^2 = ln(1 + cv^2),   mu = ln(m) - sigma^2 / 2     (so E[L] = m before clipping)

- ``empirical``: resampled (with replacement) from observed lengths: a run directory or its
  ``samples.jsonl`` (response tokens of finished samples), a JSON list, or one number per line.

``drift_per_step = r`` scales every length by ``(1 + r)^v``, ``v`` the learner version when
the sample is admitted: reasoning lengths drift as training goes on.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from asyncopd.config.schema import OPDConfig
from asyncopd.task.builtin import BuiltinTask, prompt_tokens_for, response_tokens_for


def load_lengths(path: str | Path) -> list[int]:
    """Observed response lengths from a run directory, a ``samples.jsonl``, a JSON list or a text file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "samples.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"sim.response_length.path: {p} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".jsonl":
            recs = [json.loads(line) for line in text.splitlines() if line.strip()]
            out = [int(r["response_tokens"]) for r in recs if r.get("status") in ("consumed", "evicted", "unfinished")
                   and r.get("response_tokens")]
        elif text.lstrip().startswith("["):
            out = [int(x) for x in json.loads(text)]
        else:
            out = [int(float(x)) for x in text.split()]
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"sim.response_length.path: cannot read lengths from {p} ({e})") from None
    out = [x for x in out if x > 0]
    if not out:
        raise ValueError(f"sim.response_length.path: {p} holds no positive lengths")
    return out


class LengthModel:
    def __init__(self, cfg: OPDConfig, seed: int) -> None:
        self.dist = cfg.sim.response_length
        self.max_new = cfg.rollout.max_new_tokens
        self.rng = random.Random(seed)
        self.prompt_mean = cfg.sim.prompt_tokens_mean
        self._fixed_prompt = None if self.prompt_mean is None else max(1, round(self.prompt_mean))
        if self.dist.kind == "lognormal":  # log-space parameters giving the requested mean and cv
            sigma2 = math.log(1 + self.dist.cv**2)
            self._log_mu, self._log_sigma = math.log(self.dist.mean) - sigma2 / 2, math.sqrt(sigma2)
        self.observed = load_lengths(self.dist.path) if self.dist.kind == "empirical" else []
        self._limit = self.max_new if self.dist.kind in ("task", "empirical") else min(self.dist.max, self.max_new)
        self.task: BuiltinTask | None = None
        if self.dist.kind == "task" or self.prompt_mean is None:
            self.task = BuiltinTask(cfg.task, seed=seed)

    def response_tokens(self, prompt_id: int, version: int = 0) -> int:
        d = self.dist
        kind = d.kind
        if kind == "lognormal":
            n = math.exp(self.rng.gauss(self._log_mu, self._log_sigma))
        elif kind == "task":
            assert self.task is not None
            n = float(response_tokens_for(self.task.problem(prompt_id).n_terms))
        elif kind == "fixed":
            n = float(d.max)
        else:  # empirical
            n = float(self.rng.choice(self.observed))
        if d.drift_per_step:
            n *= (1 + d.drift_per_step) ** version
        return max(1, min(round(n), self._limit))

    def mean_prompt_tokens(self) -> float:
        if self.prompt_mean is not None:
            return float(self.prompt_mean)
        assert self.task is not None
        return self.task.mean_prompt_tokens()

    def prompt_tokens(self, prompt_id: int) -> int:
        if self._fixed_prompt is not None:
            return self._fixed_prompt
        assert self.task is not None
        return prompt_tokens_for(self.task.problem(prompt_id).n_terms)
