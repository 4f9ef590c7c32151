"""The cost-model interface: what the simulator and the planner ask of a cost model.

A cost model says how long each stage of the pipeline takes on a layout:

- ``decode_segment(n, kv0)``: decode is described per *segment*: while ``n`` sequences are
  active and the batch holds ``kv0`` KV-cache tokens, decode step ``i = 0, 1, ...`` of the
  segment takes

      t(i) = alpha + max(beta, gamma + delta * i)                                   (1)

  (``kv`` grows by ``n`` tokens per step). ``alpha`` collects fixed overheads, ``beta`` the
  compute-bound time and ``gamma + delta*i`` the memory-bound time (weights + KV reads).
  ``segment_time`` sums (1) in closed form and ``segment_steps_within`` inverts it, so the
  simulator advances a batch between events without one event per token;
- ``prefill(tokens)``, ``teacher(tokens, seqs)``, ``learner(tokens, samples)``: seconds of one
  rollout prefill, one teacher scoring batch, one learner update;
- ``sync()``: a weight sync, as the part that overlaps rollout and the part that pauses it;
- ``dispatch()``: the latency between an action and its worker starting it (an RPC);
- ``delivery()``: the latency between a rollout worker finishing and the driver holding the result;
- ``for_layout(shape)``: the model for another layout (tensor-parallel degrees, learner
  devices, cluster size); ``layout_sensitive`` says whether tensor-parallel degrees change the
  costs (the planner searches them only then; the learner's device count may matter either way);
- ``kv_capacity_seqs(tokens_per_seq, memory_utilization)``: how many sequences one rollout
  worker's KV cache holds, or ``None`` when the model does not know memory (unbounded).

Implementations register by name (``register_cost_model``), under the names the config
accepts (``asyncopd.catalog.COST_MODEL_NAMES``); ``sim.costs.make_cost_model`` selects one.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional

from asyncopd.catalog import COST_MODEL_NAMES
from asyncopd.config.schema import OPDConfig

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


@dataclass(frozen=True)
class LayoutShape:
    """What of a layout the costs depend on: devices per worker and device counts."""

    rollout_tp: int = 1
    teacher_tp: int = 1
    learner_devices: int = 1
    learner_tp: int = 1
    total_devices: int = 1

    @classmethod
    def of_config(cls, cfg: OPDConfig) -> "LayoutShape":
        lay = cfg.layout
        return cls(rollout_tp=lay.rollout.tp, teacher_tp=lay.teacher.tp, learner_devices=len(lay.learner.devices),
                   learner_tp=lay.learner.tp, total_devices=cfg.cluster.num_devices)


class CostModel(ABC):
    """Seconds per stage on a layout (see the module docstring)."""

    name: ClassVar[str] = ""
    layout_sensitive: ClassVar[bool] = False  # tensor-parallel degrees change the costs

    @classmethod
    def from_config(cls, cfg: OPDConfig) -> "CostModel":
        """The model ``cfg`` describes (registered implementations; a wrapper has none)."""
        raise NotImplementedError(f"{cls.__name__} is not built from a config")

    @abstractmethod
    def decode_segment(self, n: int, kv0: int) -> Segment: ...

    @abstractmethod
    def prefill(self, tokens: int) -> float: ...

    @abstractmethod
    def teacher(self, tokens: int, seqs: int) -> float: ...

    @abstractmethod
    def learner(self, tokens: int, samples: int) -> float: ...

    @abstractmethod
    def sync(self) -> SyncCost: ...

    @abstractmethod
    def dispatch(self) -> float: ...

    def rollout_dispatch(self) -> float:
        """The dispatch latency of a rollout wave (the base: ``dispatch()``)."""
        return self.dispatch()

    def delivery(self) -> float:
        """The return path of a rollout result: from a worker finishing a wave (continuous
        batching: a sample) to the driver holding it (the base: instant)."""
        return 0.0

    def for_layout(self, shape: LayoutShape) -> "CostModel":
        """This model on a layout of ``shape`` (the base: unchanged)."""
        return self

    def kv_capacity_seqs(self, tokens_per_seq: float, memory_utilization: float) -> Optional[int]:
        """Sequences of ``tokens_per_seq`` tokens one rollout worker's KV cache holds with
        ``memory_utilization`` of its devices; ``None``: the model does not bound it."""
        return None


COST_MODELS: dict[str, type[CostModel]] = {}


def register_cost_model(cls: type[CostModel]) -> type[CostModel]:
    """Class decorator: make ``cls`` the implementation of ``sim.cost_model: <cls.name>``."""
    if cls.name not in COST_MODEL_NAMES:
        raise ValueError(f"cost model {cls.name!r} is not one of asyncopd.catalog.COST_MODEL_NAMES "
                         f"({', '.join(COST_MODEL_NAMES)}): add it there so the config accepts it")
    if cls.name in COST_MODELS:
        raise ValueError(f"cost model {cls.name!r} is already registered")
    COST_MODELS[cls.name] = cls
    return cls
