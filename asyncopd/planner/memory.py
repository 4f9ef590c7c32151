"""Does a layout fit in device memory? Per-device bytes of every role, with the reason when not.

Notation: ``b`` bytes per value of ``models.dtype`` (2 for bfloat16, 4 for float32), ``N``
parameters, ``H`` hidden size, ``L`` layers, ``V`` vocabulary, ``I`` the MLP width one token
uses (``intermediate_size``, or ``experts_per_token * moe_intermediate_size`` for an MoE),
``kv`` KV-cache bytes per token, ``tp`` the role's tensor-parallel degree, ``S_max`` /
``S_mean`` the longest / mean sequence (prompt + response) and ``C = 8192`` tokens, the chunk
an engine prefills at once and a memory-efficient loss computes logits over (vLLM's chunked
prefill, chunked cross-entropy); the built-in task's batches are far smaller than ``C``.

Each device may hold at most ``(1 - headroom) * mem_bytes`` (``--memory-headroom``).

rollout worker, per device::

    weights    W_s / tp                         (W = N * b)
    workspace  n * (4 V + b (4 H + 2 I)) / tp   (n = rollout.max_num_seqs: fp32 logits and one
                                                 layer's activations of a decode step)
    capture    n * S_max * c_roll / tp          (behaviour log-probs, student top-K / draws)
    KV         >= kv * S_max / tp               (at least one whole sequence)

What is left of the device's share goes to the KV cache; the simulator caps the concurrent
sequences to what fits (``rollout.gpu_memory_utilization``, set per layout: see ``rollout_share``).

teacher worker, per device (scoring batches of ``m = teacher.max_batch_samples``)::

    weights    W_t / tp
    KV         kv_t * min(m S_max, max(C, S_max)) / tp    (context of the chunk being scored)
    activations T_c * b (4 H + 2 I) / tp,  logits T_c * V * 4 / tp   (T_c = min(m S_max, C))
    payload    m * S_max * c_teach                      (the batch's teacher-score cache entries)

learner, per device of its ``D`` devices (``dp = D / tp`` data-parallel ranks; mixed
precision: weights and gradients in ``b``, fp32 master copy and Adam moments in 12 bytes/param
for bf16, Adam in 8 for fp32 -- 16 bytes/param in total either way, as ``sim.analytic``
charges). The model states depend on ``learner.strategy``::

    ddp   (every rank a full replica)   weights + grads  2 b N / tp     optimizer  (16 - 2 b) N / tp
    fsdp  (sharded over all D)          weights + grads  2 b N / D      optimizer  (16 - 2 b) N / D
          + gathered  2 b N / L   (the unit being computed and the one prefetched, one layer each,
                                   whole: FSDP2 all-gathers a layer's parameters before using them)
    activations (full activation checkpointing, T_m = ceil(micro_batch_size / dp) * S_mean):
        checkpoints  T_m * H * L * b / tp       one layer recomputed  T_m * b (8 H + 3 I) / tp
        logits       min(T_m, C) * V * 4 * 2 / tp   (fp32 logits and their gradient, in chunks)
    payload    T_m * c_teach                    (the micro-batch's teacher-score cache entries)

Roles sharing a group add up on every device of it; a rollout or teacher running ``k``
workers per device counts ``k`` times. These are estimates (no allocator fragmentation, CUDA
context or communication buffers beyond the headroom); the simulator never sees an
infeasible layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from asyncopd.planner.space import Layout
from asyncopd.planner.workload import Workload
from asyncopd.catalog.hardware import Hardware

CHUNK_TOKENS = 8192


def _mlp_width(m) -> int:
    return m.experts_per_token * m.moe_intermediate_size + m.shared_expert_intermediate_size if m.is_moe \
        else m.intermediate_size


def rollout_terms(w: Workload, tp: int) -> dict[str, float]:
    m, b, n = w.student, w.dtype_bytes, w.max_num_seqs
    return {
        "weights": m.weight_bytes(b) / tp,
        "workspace": n * (4 * m.vocab_size + b * (4 * m.hidden_size + 2 * _mlp_width(m))) / tp,
        "capture": n * w.seq_max * w.rollout_capture_per_token / tp,
        "kv (1 seq)": m.kv_bytes_per_token(b) * w.seq_max / tp,
    }


def teacher_terms(w: Workload, tp: int) -> dict[str, float]:
    m, b, k = w.teacher, w.dtype_bytes, w.teacher_batch
    batch_tokens = k * w.seq_max
    chunk = min(batch_tokens, CHUNK_TOKENS)
    return {
        "weights": m.weight_bytes(b) / tp,
        "kv": m.kv_bytes_per_token(b) * min(batch_tokens, max(CHUNK_TOKENS, w.seq_max)) / tp,
        "activations": chunk * b * (4 * m.hidden_size + 2 * _mlp_width(m)) / tp,
        "logits": chunk * m.vocab_size * 4 / tp,
        "payload": batch_tokens * w.teacher_payload_per_token,
    }


def learner_terms(w: Workload, devices: int, tp: int, strategy: str = "ddp") -> dict[str, float]:
    m, b = w.student, w.dtype_bytes
    dp = max(1, devices // tp)
    tokens = math.ceil(w.micro_batch_size / dp) * w.seq_mean
    shard = devices if strategy == "fsdp" else tp  # what the model states are split over
    states = {"weights+grads": 2 * b * m.n_params / shard, "optimizer": (16 - 2 * b) * m.n_params / shard}
    if strategy == "fsdp" and devices > 1:
        states["gathered"] = 2 * b * m.n_params / max(1, m.num_layers)
    return {
        **states,
        "checkpoints": tokens * m.hidden_size * m.num_layers * b / tp,
        "recompute": tokens * b * (8 * m.hidden_size + 3 * _mlp_width(m)) / tp,
        "logits": min(tokens, CHUNK_TOKENS) * m.vocab_size * 8 / tp,
        "payload": tokens * w.teacher_payload_per_token,
    }


@dataclass
class MemoryCheck:
    ok: bool
    usable: float  # bytes per device
    peak: float  # the fullest device's bytes (without the rollout's KV pool beyond one sequence)
    reason: str = ""
    rollout_share: float = 0.0  # fraction of a device's memory each rollout worker may use (weights + KV)
    terms: dict[str, dict[str, float]] = field(default_factory=dict)  # role -> term -> bytes per device

    @property
    def peak_fraction(self) -> float:
        return self.peak / self.usable if self.usable else math.inf


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB" if x >= 1e8 else f"{x / 1e6:.3g} MB"


def check_memory(layout: Layout, w: Workload, hw: Hardware, headroom: float,
                 rollout_utilization: float = 0.9) -> MemoryCheck:
    """Per-device memory of ``layout`` (module docstring). ``rollout_utilization`` is the
    config's ``rollout.gpu_memory_utilization``, the most a rollout worker asks for."""
    usable = (1.0 - headroom) * hw.mem_bytes
    terms = {
        "rollout": rollout_terms(w, layout.rollout.tp),
        "teacher": teacher_terms(w, layout.teacher.tp),
        "learner": learner_terms(w, layout.learner.size, layout.learner.tp, w.learner_strategy),
    }
    peak, worst, share = 0.0, None, 1.0
    for g, roles in layout.groups():
        load = {r: layout.role(r).per_device * sum(terms[r].values()) for r in roles}
        total = sum(load.values())
        if total > peak:
            peak, worst = total, (g, roles, load)
        if "rollout" in roles:
            k = layout.rollout.per_device
            others = total - load["rollout"]
            share = min(share, (usable - others) / k / hw.mem_bytes)
    check = MemoryCheck(ok=peak <= usable, usable=usable, peak=peak, terms=terms,
                        rollout_share=max(0.0, min(share, rollout_utilization, 1.0 - headroom)))
    if not check.ok and worst is not None:
        g, roles, load = worst
        span = f"device {g.first}" if g.size == 1 else f"devices {g.first}-{g.first + g.size - 1}"
        parts = []
        for r in roles:
            k = layout.role(r).per_device
            top = sorted(terms[r].items(), key=lambda kv: -kv[1])[:3]
            detail = ", ".join(f"{name} {_gb(v)}" for name, v in top)
            parts.append(f"{r}{f' x{k}' if k > 1 else ''} {_gb(load[r])} ({detail})")
        check.reason = (f"out of memory on {span}: {' + '.join(parts)} = {_gb(peak)} > {_gb(usable)} usable "
                        f"({hw.name}: {_gb(hw.mem_bytes)}, headroom {headroom:.0%})")
        lrn = layout.learner
        if "learner" in roles and w.learner_strategy == "ddp" and lrn.size > 1:
            sharded = sum(learner_terms(w, lrn.size, lrn.tp, "fsdp").values())
            if peak - load["learner"] + sharded <= usable:
                check.reason += f"; learner.strategy: fsdp would shard the learner over its {lrn.size} devices and fit"
    return check
