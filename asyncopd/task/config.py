"""Configuration of the built-in synthetic reasoning task (pure pydantic, no torch).

The task (``asyncopd.task.builtin``): ``n`` labelled digits, a response that writes the
running sum mod 10 step by step (3 tokens a step), then ``>`` and the final digit. With the
defaults (2..14 terms, ``length_skew`` 0.3) responses are 9..45 tokens (EOS included),
mean about 19.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Step labels are a-z then A-Z (asyncopd.task.builtin.LABELS), so at most 52 terms.
MAX_TERMS = 52


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["running_sum"] = "running_sum"
    min_terms: int = Field(2, ge=1, description="fewest input digits in a prompt")
    max_terms: int = Field(14, ge=1, description=f"most input digits in a prompt (at most {MAX_TERMS})")
    length_skew: float = Field(
        0.3, ge=0.0, le=1.0,
        description="0: term count uniform in [min_terms, max_terms]; towards 1: geometric, long-tailed "
                    "(P(n = min_terms + k) ~ exp(-8 * length_skew * k / (max_terms - min_terms)))"
    )
    eval_prompts: int = Field(200, ge=1, description="held-out prompts for accuracy")

    @model_validator(mode="after")
    def _check_range(self) -> "TaskConfig":
        if self.max_terms < self.min_terms:
            raise ValueError(f"max_terms ({self.max_terms}) must be >= min_terms ({self.min_terms})")
        if self.max_terms > MAX_TERMS:
            raise ValueError(f"max_terms ({self.max_terms}) must be <= {MAX_TERMS} (step labels a-z, A-Z)")
        return self
