"""Rollout micro-benchmarks on ``TorchRolloutEngine.generate``: decode steps and prefill.

Decode step (stage ``decode``): ``n`` prompts of ``P`` tokens are generated together with no EOS,
so all ``n`` stay active. The engine calls ``step_hook`` once between consecutive decode steps
(after sampling a token for every row, before the next batched forward), so the gap between two
hook calls is exactly one step as the trainer runs it: forward over ``n`` rows with ``P + i``
cached tokens each, sampling, bookkeeping. After ``DECODE_WARMUP`` steps, the median of
``DECODE_STEPS`` gaps is the point's time; its ``kv`` is the context length at the middle step.

Prefill (stage ``prefill``): ``generate`` of ``n`` prompts of ``P`` tokens with
``max_new_tokens = 1``: one batched forward over ``tokens = n * P`` prompt tokens plus one
sampling step (median of 5 after one warm-up).

Grids come from the config: ``n`` in powers of two up to ``rollout.max_num_seqs``; context
lengths from the task's prompt lengths up to the longest prompt plus the longest response
(kept within the model's ``max_position_embeddings``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from asyncopd.backends.base import GenRequest
from calibration.profilers.bench import Bench, median_seconds, spread, task_lengths

DECODE_WARMUP = 3
DECODE_STEPS = 12
ROLE = "rollout"


def _max_positions(bench: Bench) -> int:
    try:
        cfg = json.loads((Path(bench.models.student) / "config.json").read_text())
        return int(cfg.get("max_position_embeddings") or 1 << 20)
    except (OSError, ValueError):
        return 1 << 20


def batch_sizes(limit: int) -> list[int]:
    out, n = [], 1
    while n < limit:
        out.append(n)
        n *= 2
    return sorted(set(out + [max(1, limit)]))


def plan_decode(bench: Bench) -> list[dict[str, Any]]:
    L = task_lengths(bench.cfg)
    steps = DECODE_WARMUP + DECODE_STEPS + 1
    top = _max_positions(bench) - steps
    contexts = sorted({L["p_min"], L["p_mean"], L["p_max"] + L["r_mean"], L["p_max"] + L["r_max"]})
    prompts = sorted({max(1, min(top, c - DECODE_WARMUP - DECODE_STEPS // 2)) for c in contexts})
    specs = [{"stage": "decode", "n": n, "prompt": p, "kv": p + DECODE_WARMUP + DECODE_STEPS // 2 + 1}
             for n in batch_sizes(max(2, bench.cfg.rollout.max_num_seqs)) for p in prompts]
    return spread(specs, ("n", "kv"))


def measure_decode(bench: Bench, spec: dict[str, Any]) -> float:
    stamps: list[float] = []

    def hook() -> tuple[None, tuple[int, ...]]:
        bench.synchronize()
        stamps.append(time.perf_counter())
        return None, ()

    reqs = [GenRequest(i, i, p) for i, p in enumerate(bench.prompts(spec["n"], spec["prompt"]))]
    with bench.max_new_tokens(DECODE_WARMUP + DECODE_STEPS + 1) as eng:
        eng.generate(reqs, step_hook=hook)
    gaps = np.diff(stamps)[DECODE_WARMUP - 1:]
    return float(np.median(gaps))


def plan_prefill(bench: Bench) -> list[dict[str, Any]]:
    L = task_lengths(bench.cfg)
    N = bench.cfg.rollout.max_num_seqs
    specs = [{"stage": "prefill", "n": n, "prompt": p, "tokens": n * p}
             for n in sorted({1, max(1, N // 2), N}) for p in sorted({L["p_min"], L["p_mean"], L["p_max"]})]
    return spread(specs, ("n", "prompt"))


def measure_prefill(bench: Bench, spec: dict[str, Any]) -> float:
    reqs = [GenRequest(i, i, p) for i, p in enumerate(bench.prompts(spec["n"], spec["prompt"]))]
    with bench.max_new_tokens(1) as eng:
        return median_seconds(lambda: eng.generate(reqs), bench, warmup=1, repeats=5)
