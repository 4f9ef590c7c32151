"""Configuration of the built-in synthetic reasoning task (pure pydantic, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["running_sum"] = "running_sum"
    min_terms: int = Field(2, ge=1, description="fewest input digits in a prompt")
    max_terms: int = Field(16, ge=1, description="most input digits in a prompt")
    length_skew: float = Field(
        0.0, ge=0.0, le=1.0,
        description="0: term count uniform in [min_terms, max_terms]; towards 1: geometric, long-tailed"
    )
    eval_prompts: int = Field(200, ge=1, description="held-out prompts for accuracy")

    @model_validator(mode="after")
    def _check_range(self) -> "TaskConfig":
        if self.max_terms < self.min_terms:
            raise ValueError(f"max_terms ({self.max_terms}) must be >= min_terms ({self.min_terms})")
        return self
