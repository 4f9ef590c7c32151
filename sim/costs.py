"""Cost models: how long each stage takes. One interface, two implementations.

Decode is described per *segment*: while ``n`` sequences are active and the batch holds
``kv0`` KV-cache tokens, decode step ``i = 0, 1, ...`` of the segment takes

    t(i) = alpha + max(beta, gamma + delta * i)                                   (1)

(``kv`` grows by ``n`` tokens per step). ``alpha`` collects fixed overheads, ``beta`` the
compute-bound time and ``gamma + delta*i`` the memory-bound time (weights + KV reads).
``segment_time`` sums (1) in closed form and ``segment_steps_within`` inverts it, so the
simulator advances a batch between events without one event per token.

- ``ParametricCosts`` (``sim.cost_model: parametric``): ``t = a + b*n`` per decode step and
  linear teacher / learner / sync times; defaults measured on a 2-core CPU for the built-in
  task, replaced by ``asyncopd calibrate``.
- ``AnalyticCosts`` (``sim.cost_model: analytic``): roofline from a ``Hardware`` and the
  student / teacher ``ModelDesc`` with tensor parallelism inside each worker:

      decode   alpha = t_step + L*t_layer + n*t_req + t_allreduce(n)
               beta  = 2*N_active*n / (F_eff * tp)
               gamma = (W_bytes + kv0*kv_bytes) / (BW_eff * tp),  delta = n*kv_bytes / (BW_eff * tp)
      prefill  FLOPs(T) / (F_eff * tp)  (+ attention, see ``ModelDesc.prefill_flops``)
      teacher  prefill over prompt+response + top-k extraction (a pass over T x V logits)
      learner  3 * forward FLOPs / (F_eff * devices) + per-micro-batch overhead
      sync     pause = t_ctrl + bytes / link_bw ;  overlap = t_gather (learner side)

Both add ``dispatch()``: the latency between an action and its worker starting it (an RPC).

  Overhead terms follow public fits of vLLM on H100 (≈126 µs/step, ≈32 µs/layer, ≈4 µs
  per request); calibration replaces them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from asyncopd.config.schema import SimCosts

Segment = tuple[float, float, float, float]  # alpha, beta, gamma, delta of equation (1)


def segment_time(seg: Segment, k: int) -> float:
    """Sum of (1) over the first ``k`` steps."""
    if k <= 0:
        return 0.0
    alpha, beta, gamma, delta = seg
    if delta > 0:
        x = (beta - gamma) / delta  # steps i <= x are compute-bound
        first_mem = 0 if x < 0 else (k if x >= k else math.floor(x) + 1)
    else:
        first_mem = 0 if gamma > beta else k
    compute_steps = first_mem
    mem = k - compute_steps
    i0 = compute_steps
    mem_sum = mem * gamma + delta * (mem * i0 + mem * (mem - 1) / 2)
    return k * alpha + compute_steps * beta + mem_sum


def segment_steps_within(seg: Segment, budget: float) -> int:
    """Largest ``k`` with ``segment_time(seg, k) <= budget`` (steps are all > 0 long).

    Closed form: the first ``m0`` steps are compute-bound and take ``alpha + beta`` each;
    after them, ``j`` memory-bound steps take ``j*(alpha + gamma + delta*m0) + delta*j*(j-1)/2``,
    a quadratic in ``j``. The float estimate is then corrected to the exact integer answer."""
    if budget <= 0:
        return 0
    alpha, beta, gamma, delta = seg
    if alpha + max(beta, gamma) <= 0 and delta <= 0:
        raise ValueError("decode steps take no time; check the cost model")
    x = (beta - gamma) / delta if delta > 0 else (-math.inf if gamma > beta else math.inf)
    m0 = 0.0 if x < 0 else (math.floor(x) + 1.0 if x < 1e15 else math.inf)
    per_compute = alpha + beta
    if m0 == math.inf or budget < m0 * per_compute:
        guess = budget / per_compute
    else:
        rest = budget - m0 * per_compute
        lin = alpha + gamma + delta * m0 - delta / 2
        # root of (delta/2) j^2 + lin j - rest, in whichever form does not cancel
        root = math.sqrt(lin * lin + 2 * delta * rest)
        guess = m0 + (2 * rest / (lin + root) if lin > 0 else (root - lin) / delta)
    return _exact_steps(seg, budget, int(min(guess, 1 << 40)))


def _exact_steps(seg: Segment, budget: float, k: int) -> int:
    """From an estimate ``k``, the largest ``k`` with ``segment_time(seg, k) <= budget``
    (galloping, then bisection: a handful of evaluations when the estimate is close)."""
    k = max(0, k)
    if segment_time(seg, k) <= budget:
        lo, step = k, 1
        while segment_time(seg, lo + step) <= budget:
            lo += step
            step *= 2
            if lo > 1 << 41:
                raise ValueError("decode steps take no time; check the cost model")
        hi = lo + step
    else:
        hi, step = k, 1
        while hi - step > 0 and segment_time(seg, hi - step) > budget:
            hi -= step
            step *= 2
        lo = max(0, hi - step)
    while hi - lo > 1:  # time(lo) <= budget < time(hi)
        mid = (lo + hi) // 2
        if segment_time(seg, mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class SyncCost:
    overlap_s: float  # learner-side gather / publish: rollout keeps generating
    pause_s: float  # transfer + load: rollout paused


class CostModel(Protocol):
    def decode_segment(self, n: int, kv0: int) -> Segment: ...
    def prefill(self, tokens: int) -> float: ...
    def teacher(self, tokens: int, seqs: int) -> float: ...
    def learner(self, tokens: int, samples: int) -> float: ...
    def sync(self) -> SyncCost: ...
    def dispatch(self) -> float: ...


@dataclass(frozen=True)
class ParametricCosts:
    p: SimCosts
    model_bytes: float

    def decode_segment(self, n: int, kv0: int) -> Segment:
        return (self.p.decode_step_s + self.p.decode_per_seq_s * n, 0.0, 0.0, 0.0)

    def prefill(self, tokens: int) -> float:
        return self.p.prefill_per_token_s * tokens

    def teacher(self, tokens: int, seqs: int) -> float:
        return self.p.teacher_fixed_s + self.p.teacher_per_token_s * tokens

    def learner(self, tokens: int, samples: int) -> float:
        return self.p.learner_fixed_s + self.p.learner_per_token_s * tokens

    def sync(self) -> SyncCost:
        return SyncCost(self.p.dispatch_s, self.p.sync_fixed_s + self.model_bytes / self.p.sync_bytes_per_s)

    def dispatch(self) -> float:
        return self.p.dispatch_s


class JitteredCosts:
    """Run-to-run noise on top of a cost model: each stage time is multiplied by an independent
    lognormal factor with mean 1 and coefficient of variation ``cv`` of its stage,

        factor = exp(sigma * Z - sigma^2 / 2),   sigma^2 = ln(1 + cv^2),   Z ~ N(0, 1),

    drawn per call (a decode *segment*, a teacher batch, a learner step, a sync pause, a
    dispatch). Real stage times scatter around their fitted means (fit MAPE 15-25% on a shared
    CPU); without this the simulated pipeline locks into one phase the real one keeps leaving.
    The ``cv`` values are ``sim.costs.*_cv``, fitted by ``asyncopd calibrate --from-run``."""

    def __init__(self, base: CostModel, cv: dict[str, float], seed: int) -> None:
        self.base = base
        self._sigma = {k: math.sqrt(math.log1p(v * v)) for k, v in cv.items()}
        self._rng = random.Random(seed * 7919 + 17)

    def _f(self, stage: str) -> float:
        s = self._sigma.get(stage, 0.0)
        return self._rng.lognormvariate(-s * s / 2, s) if s > 0 else 1.0

    def decode_segment(self, n: int, kv0: int) -> Segment:
        f = self._f("decode")
        return tuple(x * f for x in self.base.decode_segment(n, kv0))  # type: ignore[return-value]

    def prefill(self, tokens: int) -> float:
        return self.base.prefill(tokens) * self._f("decode")

    def teacher(self, tokens: int, seqs: int) -> float:
        return self.base.teacher(tokens, seqs) * self._f("teacher")

    def learner(self, tokens: int, samples: int) -> float:
        return self.base.learner(tokens, samples) * self._f("learner")

    def sync(self) -> SyncCost:
        c = self.base.sync()
        return SyncCost(c.overlap_s, c.pause_s * self._f("sync"))

    def dispatch(self) -> float:
        return self.base.dispatch() * self._f("dispatch")

    def __getattr__(self, name: str):  # e.g. kv_capacity_seqs of the analytic model
        return getattr(self.base, name)


def make_cost_model(cfg, seed: int = 0) -> CostModel:
    """The cost model ``cfg.sim.cost_model`` asks for, with ``sim.costs.*_cv`` noise (seeded)."""
    if cfg.sim.cost_model == "analytic":
        from sim.analytic import AnalyticCosts

        base: CostModel = AnalyticCosts.from_config(cfg)
    else:
        base = ParametricCosts(cfg.sim.costs, cfg.sim.costs.model_bytes or 0.0)
    c = cfg.sim.costs
    cv = {"decode": c.decode_cv, "teacher": c.teacher_cv, "learner": c.learner_cv, "sync": c.sync_cv,
          "dispatch": c.dispatch_cv}
    return JitteredCosts(base, cv, seed) if any(v > 0 for v in cv.values()) else base
