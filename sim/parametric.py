"""The parametric cost model (``sim.cost_model: parametric``): linear per-stage costs.

With ``c = sim.costs`` (``SimCosts``; defaults measured on a 2-core CPU for the built-in task,
replaced by ``asyncopd calibrate``)::

    decode step of n sequences   c.decode_step_s + c.decode_per_seq_s * n      (alpha of (1); no KV term)
    rollout prefill of T tokens  c.prefill_fixed_s + c.prefill_per_token_s * T
    teacher batch of T tokens    c.teacher_fixed_s + c.teacher_per_token_s * T
    learner update of T tokens   c.learner_fixed_s + c.learner_per_token_s * T / N + dp_comm(N)
    weight sync                  overlap c.dispatch_s;
                                 pause   c.sync_fixed_s + W / c.sync_bytes_per_s                (object_store)
                                         c.sync_fixed_s + W / c.sync_bytes_per_s
                                                        + ceil(W / K) * c.sync_bucket_latency_s  (collective)
    dispatch                     c.dispatch_s   (a rollout wave: c.rollout_dispatch_s, None = c.dispatch_s)
    rollout result's return      c.return_s   (a wave's end, or a continuous sample's, to the driver)

The learner on ``N = len(layout.learner.devices)`` devices runs ``N`` data-parallel ranks
(``learner.strategy``), each over a token-balanced ``T / N`` of the batch, then they exchange
gradients: ``dp_comm(N)`` is equation (2) of ``sim.collectives``,

    ddp:  2 (N-1)/N * G / c.allreduce_bytes_per_s + 2 (N-1) * c.allreduce_latency_s
    fsdp: 3 (N-1)/N * G / c.allreduce_bytes_per_s + 3 (N-1) * c.allreduce_latency_s
    N = 1: 0   (the single-device model, bit for bit)

``G`` (gradient bytes) is ``c.model_bytes`` when it is set and positive, else the student's
parameter count (``asyncopd.catalog``) times the bytes of ``models.dtype``. ``W`` is
``c.model_bytes`` (None: 0, the transfer folded into ``sync_fixed_s``) and ``K`` is
``sync.bucket_mb`` megabytes; ``sync.method: auto`` resolves as the trainer does.

Otherwise it knows neither memory nor parallelism: tensor-parallel degrees change nothing
(``layout_sensitive`` is False), and ``for_layout`` only swaps the learner's device count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from asyncopd.catalog import ModelConfigError, UnknownModelError, model_desc_for
from asyncopd.config.schema import OPDConfig, SimCosts
from sim.collectives import dp_comm_s, n_buckets
from sim.cost_model import CostModel, LayoutShape, Segment, SyncCost, register_cost_model


@register_cost_model
@dataclass(frozen=True)
class ParametricCosts(CostModel):
    name = "parametric"
    costs: SimCosts
    model_bytes: float
    learner_devices: int = 1  # N: data-parallel ranks of the learner
    strategy: str = "ddp"  # learner.strategy
    grad_bytes: Optional[float] = None  # G; None: unknown (only a learner on one device may do without)
    bucket_bytes: Optional[float] = None  # K of a collective sync; None: object_store

    @classmethod
    def from_config(cls, cfg: OPDConfig) -> "ParametricCosts":
        c = cfg.sim.costs
        collective = cfg.sync.resolved(cfg.rollout.backend) == "collective"
        return cls(c, c.model_bytes or 0.0, learner_devices=LayoutShape.of_config(cfg).learner_devices,
                   strategy=cfg.learner.strategy, grad_bytes=grad_bytes_of(cfg),
                   bucket_bytes=float(cfg.sync.bucket_bytes) if collective else None)

    def for_layout(self, shape: LayoutShape) -> "ParametricCosts":
        """The learner on ``shape.learner_devices`` devices (nothing else depends on the layout)."""
        n = max(1, shape.learner_devices)
        return self if n == self.learner_devices else replace(self, learner_devices=n)

    def decode_segment(self, n: int, kv0: int) -> Segment:
        return (self.costs.decode_step_s + self.costs.decode_per_seq_s * n, 0.0, 0.0, 0.0)

    def prefill(self, tokens: int) -> float:
        c = self.costs
        return c.prefill_fixed_s + c.prefill_per_token_s * tokens if tokens > 0 else 0.0

    def teacher(self, tokens: int, seqs: int) -> float:
        return self.costs.teacher_fixed_s + self.costs.teacher_per_token_s * tokens

    def learner(self, tokens: int, samples: int) -> float:
        c, n = self.costs, self.learner_devices
        if n <= 1:
            return c.learner_fixed_s + c.learner_per_token_s * tokens
        return c.learner_fixed_s + c.learner_per_token_s * tokens / n + self.dp_comm()

    def dp_comm(self) -> float:
        """``dp_comm(N)``: seconds of one update's gradient traffic (module docstring)."""
        n = self.learner_devices
        if n <= 1:
            return 0.0
        if self.grad_bytes is None:
            raise ValueError("sim.costs.model_bytes: a learner on several devices all-reduces its gradients, and the "
                             "student's size is unknown to the catalogue; set sim.costs.model_bytes (weight bytes)")
        return dp_comm_s(self.strategy, self.grad_bytes, n, self.costs.allreduce_bytes_per_s,
                         self.costs.allreduce_latency_s)

    def sync(self) -> SyncCost:
        c = self.costs
        pause = c.sync_fixed_s + self.model_bytes / c.sync_bytes_per_s
        if self.bucket_bytes is not None:
            pause += n_buckets(self.model_bytes, self.bucket_bytes) * c.sync_bucket_latency_s
        return SyncCost(c.dispatch_s, pause)

    def dispatch(self) -> float:
        return self.costs.dispatch_s

    def rollout_dispatch(self) -> float:
        c = self.costs
        return c.dispatch_s if c.rollout_dispatch_s is None else c.rollout_dispatch_s

    def delivery(self) -> float:
        return self.costs.return_s


def grad_bytes_of(cfg: OPDConfig) -> Optional[float]:
    """``G``: ``sim.costs.model_bytes`` if positive, else parameters x dtype bytes (None: unknown model)."""
    if cfg.sim.costs.model_bytes:
        return float(cfg.sim.costs.model_bytes)
    try:
        params = model_desc_for(cfg.models.student).n_params
    except (UnknownModelError, ModelConfigError, OSError, ValueError):
        return None
    return float(params) * (4.0 if cfg.models.dtype == "float32" else 2.0)
