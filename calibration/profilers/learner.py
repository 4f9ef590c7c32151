"""Learner micro-benchmark on ``TorchLearner.train_step`` (stage ``learner``).

A point is one full update (forward + backward over every micro-batch, gradient clipping, AdamW
step) on ``samples`` items of ``prompt`` + ``response`` tokens: rollouts of the student scored by
the teacher, i.e. exactly the ``TrainItem``s the driver hands the learner (teacher payload and
rollout capture as the configured estimator needs). ``tokens = samples * (prompt + response)``
as the simulator counts them; ``micro_batches = ceil(samples / micro_batch_size)``. Median of 3
updates after one warm-up (the weights change; the cost does not).

Grid: ``samples`` in ``learner.batch_size`` / 4, / 2, / 1; the task's short / mean / long
lengths; ``micro_batch_size`` = the config's (first: the SimCosts fit uses only these) and a
quarter of it.
"""

from __future__ import annotations

import math
from typing import Any

from calibration.profilers.bench import Bench, median_seconds, spread
from calibration.profilers.teacher import length_pairs

ROLE = "learner"


def plan(bench: Bench) -> list[dict[str, Any]]:
    lc = bench.cfg.learner
    B, m0 = lc.batch_size, lc.micro_batch_size
    groups = []
    for m in [m0] + ([max(1, m0 // 4)] if m0 > 1 else []):
        specs = [{"stage": "learner", "samples": b, "prompt": p, "response": r, "tokens": b * (p + r),
                  "micro_batch_size": m, "micro_batches": math.ceil(b / m)}
                 for b in sorted({max(1, B // 4), max(1, B // 2), B}) for p, r in length_pairs(bench)]
        groups.append(spread(specs, ("samples", "prompt")))
    return [s for g in groups for s in g]


def measure(bench: Bench, spec: dict[str, Any]) -> float:
    items = bench.train_items(spec["prompt"], spec["response"], spec["samples"])
    learner = bench.learner(spec["micro_batch_size"])
    return median_seconds(lambda: learner.train_step(items), bench, warmup=1, repeats=3)
