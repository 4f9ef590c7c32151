"""Parametric cost model of each stage (seconds), from ``SimCosts`` in the config.

    decode step (batch of n active sequences)  t = decode_step_s + decode_per_seq_s * n
    rollout prefill of T prompt tokens         t = prefill_per_token_s * T
    teacher prefill + top-k over T tokens      t = teacher_fixed_s + teacher_per_token_s * T
    learner update over T tokens               t = learner_fixed_s + learner_per_token_s * T
    weight sync (pauses the rollout worker)    t = sync_fixed_s + model_bytes / sync_bytes_per_s

T counts prompt + response tokens for the teacher and the learner (both run a full
prefill), prompt tokens for the rollout prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncopd.config.schema import SimCosts


@dataclass(frozen=True)
class CostModel:
    p: SimCosts
    model_bytes: float

    def decode_step(self, active: int) -> float:
        return self.p.decode_step_s + self.p.decode_per_seq_s * active

    def prefill(self, tokens: int) -> float:
        return self.p.prefill_per_token_s * tokens

    def teacher(self, tokens: int) -> float:
        return self.p.teacher_fixed_s + self.p.teacher_per_token_s * tokens

    def learner(self, tokens: int) -> float:
        return self.p.learner_fixed_s + self.p.learner_per_token_s * tokens

    def sync(self) -> float:
        return self.p.sync_fixed_s + self.model_bytes / self.p.sync_bytes_per_s
