"""Choosing a cost model by name, and the run-to-run noise laid over any of them.

``make_cost_model(cfg, seed)`` builds the implementation registered under
``cfg.sim.cost_model`` (``sim.cost_model.COST_MODELS``; the model named ``X`` in
``asyncopd.catalog.COST_MODEL_NAMES`` lives in ``sim/X.py``: ``parametric``, ``analytic``) and, when any ``sim.costs.*_cv`` is set, wraps it in
``JitteredCosts``. The interface is ``sim.cost_model.CostModel``.
"""

from __future__ import annotations

import importlib
import math
import random
from typing import Optional

from asyncopd.catalog import COST_MODEL_NAMES
from asyncopd.config.schema import OPDConfig
from sim.cost_model import COST_MODELS, CostModel, LayoutShape, Segment, SyncCost

for _name in COST_MODEL_NAMES:  # each lives in sim/<name>.py and registers itself on import
    importlib.import_module(f"sim.{_name}")


class JitteredCosts(CostModel):
    """Run-to-run noise on top of a cost model: each stage time is multiplied by an independent
    lognormal factor with mean 1 and coefficient of variation ``cv`` of its stage,

        factor = exp(sigma * Z - sigma^2 / 2),   sigma^2 = ln(1 + cv^2),   Z ~ N(0, 1),

    drawn per call (a decode *segment*, a teacher batch, a learner step, a sync pause, a
    dispatch). Real stage times scatter around their fitted means (fit MAPE 15-25% on a shared
    CPU); without this the simulated pipeline locks into one phase the real one keeps leaving.
    The ``cv`` values are ``sim.costs.*_cv``, fitted by ``asyncopd calibrate --from-run``.
    Everything else of the interface is the base model's; the model for another layout
    (``for_layout``) draws from the same random stream."""

    def __init__(self, base: CostModel, sigma: dict[str, float], rng: random.Random) -> None:
        self.base = base
        self.name = base.name
        self.layout_sensitive = base.layout_sensitive
        self._sigma = sigma
        self._rng = rng

    @classmethod
    def around(cls, base: CostModel, cv: dict[str, float], seed: int) -> "JitteredCosts":
        """``base`` with the noise of ``cv`` (per stage), seeded."""
        return cls(base, {k: math.sqrt(math.log1p(v * v)) for k, v in cv.items()}, random.Random(seed * 7919 + 17))

    def _factor(self, stage: str) -> float:
        s = self._sigma.get(stage, 0.0)
        return self._rng.lognormvariate(-s * s / 2, s) if s > 0 else 1.0

    def decode_segment(self, n: int, kv0: int) -> Segment:
        f = self._factor("decode")
        return tuple(x * f for x in self.base.decode_segment(n, kv0))  # type: ignore[return-value]

    def prefill(self, tokens: int) -> float:
        return self.base.prefill(tokens) * self._factor("decode")

    def teacher(self, tokens: int, seqs: int) -> float:
        return self.base.teacher(tokens, seqs) * self._factor("teacher")

    def learner(self, tokens: int, samples: int) -> float:
        return self.base.learner(tokens, samples) * self._factor("learner")

    def sync(self) -> SyncCost:
        c = self.base.sync()
        return SyncCost(c.overlap_s, c.pause_s * self._factor("sync"))

    def dispatch(self) -> float:
        return self.base.dispatch() * self._factor("dispatch")

    def rollout_dispatch(self) -> float:
        return self.base.rollout_dispatch() * self._factor("dispatch")

    def delivery(self) -> float:
        """The return path scatters as dispatch does (both are one Ray call); no draw when the
        base has none, so a model without a return latency keeps its random stream."""
        d = self.base.delivery()
        return d * self._factor("dispatch") if d > 0 else 0.0

    def for_layout(self, shape: LayoutShape) -> "JitteredCosts":
        return JitteredCosts(self.base.for_layout(shape), self._sigma, self._rng)

    def kv_capacity_seqs(self, tokens_per_seq: float, memory_utilization: float) -> Optional[int]:
        return self.base.kv_capacity_seqs(tokens_per_seq, memory_utilization)


def make_cost_model(cfg: OPDConfig, seed: int = 0) -> CostModel:
    """The cost model ``cfg.sim.cost_model`` names, with ``sim.costs.*_cv`` noise (seeded)."""
    base = COST_MODELS[cfg.sim.cost_model].from_config(cfg)
    c = cfg.sim.costs
    cv = {"decode": c.decode_cv, "teacher": c.teacher_cv, "learner": c.learner_cv, "sync": c.sync_cv,
          "dispatch": c.dispatch_cv}
    return JitteredCosts.around(base, cv, seed) if any(v > 0 for v in cv.values()) else base
