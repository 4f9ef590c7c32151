"""Analytic (roofline + overhead) cost model: ``sim.cost_model: analytic``.

Per role, a ``Hardware`` (``cluster.hardware``), the model's ``ModelDesc`` and the role's
tensor-parallel degree ``tp`` (devices per worker). With ``F = peak_flops * flops_eff`` and
``BW = mem_bw * bw_eff`` per device:

decode step, ``n`` active sequences holding ``kv`` KV tokens (``sim.cost_model.Segment`` form)::

    alpha = step_s + layers*layer_s + n*request_s + 2*layers*allreduce(n * hidden * bytes)
    beta  = 2 * N_matmul_active * n / (F * tp)
    gamma = (weight_read * W_read(n) + kv_read * kv * kv_bytes) / (BW * tp)
    delta = kv_read * n * kv_bytes / (BW * tp)

prefill of ``T`` tokens:  ``FLOPs(T) / (F * tp)`` (``ModelDesc.prefill_flops``, attention
included), at least one read of the weights.

teacher scoring of ``T`` tokens in ``m`` sequences: prefill of ``m`` sequences of ``T/m``
tokens + top-k extraction ``T * V * 4 bytes * topk_passes / BW`` + ``teacher_fixed_s``.

learner update over ``T`` tokens in ``m`` samples on ``D`` devices (``dp = D / tp``)::

    3 * FLOPs / (F * D)  +  optimizer: 16 bytes/param / (BW * D)
    + dp_comm(dp) of G = b * N / tp gradient bytes  +  n_micro * micro_batch_s + learner_fixed_s

``dp_comm`` is equation (2) of ``sim.collectives``, the convention ``sim.parametric`` shares:
``k (dp-1)/dp * G / link_bw(D) + k (dp-1) * allreduce_latency_s`` with ``k = 2`` for
``learner.strategy: ddp`` (ring all-reduce) and ``k = 3`` for ``fsdp`` (all-gather of the
parameters in forward and in backward, reduce-scatter of the gradients); ``b`` the bytes of
``models.dtype`` (gradients travel in the parameters' dtype).

weight sync of the student (``W`` bytes)::

    overlap (learner gathers/publishes, rollout keeps going) = gather_s + W / intra_node_bw
    pause   (rollout stops)                                  = ctrl_s   + W / link_bw

``allreduce(b) = 2 (tp-1)/tp * b / link_bw + allreduce_latency_s`` (ring; a tensor-parallel
activation all-reduce is small and latency-bound, one latency each). The overhead
defaults follow public fits of vLLM on H100 (about 126 µs per step, 32 µs per layer, 4 µs per
request, KV reads x1.9, weight reads x1.4); their values live in one place, the config's
``sim.analytic`` section (``AnalyticParams``); calibration replaces them.

``for_layout`` swaps the tensor-parallel degrees, the learner's devices and the cluster size
(``LayoutShape``), the only layout facts these formulas read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

from asyncopd.catalog import Hardware, ModelDesc, get_hardware, model_desc_for
from asyncopd.config.schema import AnalyticParams, OPDConfig
from sim.collectives import dp_comm_s
from sim.cost_model import CostModel, LayoutShape, Segment, SyncCost, register_cost_model


@register_cost_model
@dataclass(frozen=True)
class AnalyticCosts(CostModel):
    """The roofline model of the module docstring; ``overheads`` holds its overhead terms."""

    name = "analytic"
    layout_sensitive = True
    hw: Hardware
    student: ModelDesc
    teacher_model: ModelDesc
    dtype_bytes: float
    shape: LayoutShape
    micro_batch_size: int
    top_k: int
    overheads: AnalyticParams  # (sim.analytic: the only place its defaults are written)
    strategy: str = "ddp"  # learner.strategy

    @classmethod
    def from_config(cls, cfg: OPDConfig) -> "AnalyticCosts":
        return cls(
            hw=get_hardware(cfg.cluster.hardware), student=model_desc_for(cfg.models.student),
            teacher_model=model_desc_for(cfg.models.teacher),
            dtype_bytes=4.0 if cfg.models.dtype == "float32" else 2.0, shape=LayoutShape.of_config(cfg),
            micro_batch_size=cfg.learner.micro_batch_size, top_k=cfg.teacher.top_k, overheads=cfg.sim.analytic,
            strategy=cfg.learner.strategy,
        )

    def for_layout(self, shape: LayoutShape) -> "AnalyticCosts":
        return replace(self, shape=shape)

    # ------------------------------------------------------------ helpers
    @cached_property
    def flops(self) -> float:
        """``F``: achievable FLOP/s of one device."""
        return self.hw.peak_flops * self.hw.flops_eff

    @cached_property
    def bandwidth(self) -> float:
        """``BW``: achievable memory bandwidth of one device."""
        return self.hw.mem_bw * self.hw.bw_eff

    @cached_property
    def _student(self) -> tuple[float, float, float]:
        """(matmul params per token, KV bytes per token, weight bytes) of the student."""
        m = self.student
        return m.n_matmul_params_active, m.kv_bytes_per_token(self.dtype_bytes), m.weight_bytes(self.dtype_bytes)

    def _allreduce(self, nbytes: float, group: int) -> float:
        if group <= 1:
            return 0.0
        return 2 * (group - 1) / group * nbytes / self.hw.link_bw(group) + self.overheads.allreduce_latency_s

    def _prefill(self, m: ModelDesc, tokens: float, tp: int) -> float:
        compute = m.prefill_flops(int(round(tokens))) / (self.flops * tp)
        weights = m.weight_bytes(self.dtype_bytes) / (self.bandwidth * tp)
        return max(compute, weights)

    @cached_property
    def _decode_by_n(self) -> dict[int, tuple[float, float, float, float]]:
        """``n`` -> ``(alpha, beta, weight_read * W_read(n), delta)``, filled by ``decode_segment``."""
        return {}

    @cached_property
    def _gamma_kv(self) -> tuple[float, float, float]:
        """``(kv_read, KV bytes per token, BW * tp)``: the factors of gamma's KV term."""
        return self.overheads.kv_read, self._student[1], self.bandwidth * self.shape.rollout_tp

    # ------------------------------------------------------------ interface
    def decode_segment(self, n: int, kv0: int) -> Segment:
        """Equation (1)'s terms; all but gamma's KV term depend on ``n`` only and are kept per
        ``n`` (the simulator asks once per decode segment), gamma is then evaluated with the
        same operations in the same order, so the result is the same float."""
        per_n = self._decode_by_n.get(n)
        if per_n is None:
            per_n = self._decode_by_n[n] = self._decode_terms(n)
        alpha, beta, weight_term, delta = per_n
        kv_read, kvb, bw_tp = self._gamma_kv
        return alpha, beta, (weight_term + kv_read * kv0 * kvb) / bw_tp, delta

    def _decode_terms(self, n: int) -> tuple[float, float, float, float]:
        m, tp, b, o = self.student, self.shape.rollout_tp, self.dtype_bytes, self.overheads
        matmul, kvb, weights = self._student
        comm = 2 * m.num_layers * self._allreduce(n * m.hidden_size * b, tp)
        alpha = o.step_s + m.num_layers * o.layer_s + n * o.request_s + comm
        beta = 2 * matmul * n / (self.flops * tp)
        w_read = m.decode_weight_bytes(n, b) if m.is_moe else weights
        delta = o.kv_read * n * kvb / (self.bandwidth * tp)
        return alpha, beta, o.weight_read * w_read, delta

    def prefill(self, tokens: int) -> float:
        return self._prefill(self.student, tokens, self.shape.rollout_tp) if tokens > 0 else 0.0

    def teacher(self, tokens: int, seqs: int) -> float:
        m, tp = self.teacher_model, self.shape.teacher_tp
        seqs = max(1, seqs)
        compute = seqs * m.prefill_flops(max(1, round(tokens / seqs))) / (self.flops * tp)
        weights = m.weight_bytes(self.dtype_bytes) / (self.bandwidth * tp)
        topk = tokens * m.vocab_size * 4 * self.overheads.topk_passes / (self.bandwidth * tp)
        return self.overheads.teacher_fixed_s + max(compute, weights) + topk

    def learner(self, tokens: int, samples: int) -> float:
        m, d = self.student, max(1, self.shape.learner_devices)
        tp = max(1, self.shape.learner_tp)
        samples = max(1, samples)
        fwd = samples * m.prefill_flops(max(1, round(tokens / samples)))
        compute = 3 * fwd / (self.flops * d)
        optimizer = 16 * m.n_params / (self.bandwidth * d)
        dp = max(1, d // tp)
        grads = dp_comm_s(self.strategy, self.dtype_bytes * m.n_params / tp, dp, self.hw.link_bw(d),
                          self.overheads.allreduce_latency_s)
        micro = math.ceil(samples / max(1, self.micro_batch_size))
        return self.overheads.learner_fixed_s + compute + optimizer + grads + micro * self.overheads.micro_batch_s

    def sync(self) -> SyncCost:
        w = self.student.weight_bytes(self.dtype_bytes)
        return SyncCost(overlap_s=self.overheads.sync_gather_s + w / self.hw.intra_node_bw,
                        pause_s=self.overheads.sync_ctrl_s + w / self.hw.link_bw(self.shape.total_devices))

    def dispatch(self) -> float:
        return self.overheads.dispatch_s

    def kv_capacity_seqs(self, tokens_per_seq: float, memory_utilization: float) -> int:
        """Sequences of ``tokens_per_seq`` that fit in one rollout worker's KV cache: the
        worker's share of its ``tp`` devices less the student's weights, over the KV bytes of
        one sequence."""
        free = (self.hw.mem_bytes * self.shape.rollout_tp * memory_utilization
                - self.student.weight_bytes(self.dtype_bytes))
        per_seq = self.student.kv_bytes_per_token(self.dtype_bytes) * max(1.0, tokens_per_seq)
        return max(0, int(free // per_seq))
