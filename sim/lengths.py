"""Response and prompt lengths for simulated samples.

``task``: the built-in task's reference response for that very prompt id (so a simulated
run and a real run of the same config see the same prompts); ``fixed``: always ``max``;
``lognormal``: mean and coefficient of variation ``cv``, rounded, clipped to [1, max]:

    sigma^2 = ln(1 + cv^2),   mu = ln(mean) - sigma^2 / 2   (so that E[L] = mean before clipping)
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from asyncopd.config.schema import OPDConfig
from asyncopd.task.builtin import prompt_tokens_for, response_tokens_for

if TYPE_CHECKING:
    from asyncopd.task import BuiltinTask


class LengthModel:
    def __init__(self, cfg: OPDConfig, seed: int) -> None:
        self.dist = cfg.sim.response_length
        self.max_new = cfg.rollout.max_new_tokens
        self.rng = random.Random(seed)
        self.prompt_mean = cfg.sim.prompt_tokens_mean
        self.task: BuiltinTask | None = None
        if self.dist.kind == "task" or self.prompt_mean is None:
            from asyncopd.task import BuiltinTask

            self.task = BuiltinTask(cfg.task, seed=cfg.run.seed)

    def response_tokens(self, prompt_id: int) -> int:
        d = self.dist
        if d.kind == "task":
            n = response_tokens_for(self.task.problem(prompt_id).n_terms)
        elif d.kind == "fixed":
            n = d.max
        else:
            sigma2 = math.log(1 + d.cv**2)
            n = round(math.exp(self.rng.gauss(math.log(d.mean) - sigma2 / 2, math.sqrt(sigma2))))
        return max(1, min(n, d.max, self.max_new))

    def mean_prompt_tokens(self) -> float:
        if self.prompt_mean is not None:
            return float(self.prompt_mean)
        assert self.task is not None
        return self.task.mean_prompt_tokens()

    def prompt_tokens(self, prompt_id: int) -> int:
        if self.prompt_mean is not None:
            return max(1, round(self.prompt_mean))
        return prompt_tokens_for(self.task.problem(prompt_id).n_terms)
