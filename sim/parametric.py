"""The parametric cost model (``sim.cost_model: parametric``): linear per-stage costs.

With ``c = sim.costs`` (``SimCosts``; defaults measured on a 2-core CPU for the built-in task,
replaced by ``asyncopd calibrate``)::

    decode step of n sequences   c.decode_step_s + c.decode_per_seq_s * n      (alpha of (1); no KV term)
    rollout prefill of T tokens  c.prefill_per_token_s * T
    teacher batch of T tokens    c.teacher_fixed_s + c.teacher_per_token_s * T
    learner update of T tokens   c.learner_fixed_s + c.learner_per_token_s * T
    weight sync                  overlap c.dispatch_s; pause c.sync_fixed_s + model_bytes / c.sync_bytes_per_s
    dispatch                     c.dispatch_s

It knows neither memory nor parallelism: one worker's costs do not depend on the layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncopd.config.schema import OPDConfig, SimCosts
from sim.cost_model import CostModel, Segment, SyncCost, register_cost_model


@register_cost_model
@dataclass(frozen=True)
class ParametricCosts(CostModel):
    name = "parametric"
    costs: SimCosts
    model_bytes: float

    @classmethod
    def from_config(cls, cfg: OPDConfig) -> "ParametricCosts":
        return cls(cfg.sim.costs, cfg.sim.costs.model_bytes or 0.0)

    def decode_segment(self, n: int, kv0: int) -> Segment:
        return (self.costs.decode_step_s + self.costs.decode_per_seq_s * n, 0.0, 0.0, 0.0)

    def prefill(self, tokens: int) -> float:
        return self.costs.prefill_per_token_s * tokens

    def teacher(self, tokens: int, seqs: int) -> float:
        return self.costs.teacher_fixed_s + self.costs.teacher_per_token_s * tokens

    def learner(self, tokens: int, samples: int) -> float:
        return self.costs.learner_fixed_s + self.costs.learner_per_token_s * tokens

    def sync(self) -> SyncCost:
        return SyncCost(self.costs.dispatch_s, self.costs.sync_fixed_s + self.model_bytes / self.costs.sync_bytes_per_s)

    def dispatch(self) -> float:
        return self.costs.dispatch_s
