"""Teacher micro-benchmark on ``TorchTeacherScorer.score`` (stage ``teacher``).

A point scores ``samples`` rollouts of ``prompt`` + ``response`` tokens (made by the student's
rollout engine, with the capture the estimator needs, and turned into ``ScoreRequest``s as the
driver does) with a given ``top_k``: one batched forward over ``tokens = samples * (prompt +
response)`` positions plus the per-row top-k payload. Median of 3 calls after one warm-up.

Grid: ``samples`` up to ``teacher.max_batch_samples``; the task's short / mean / long lengths;
``top_k`` = the config's (measured first: the SimCosts fit uses only these), then 1 and 4x.
"""

from __future__ import annotations

from typing import Any

from calibration.profilers.bench import Bench, median_seconds, spread, task_lengths

ROLE = "teacher"


def length_pairs(bench: Bench) -> list[tuple[int, int]]:
    L = task_lengths(bench.cfg)
    return sorted({(L["p_min"], L["r_min"]), (L["p_mean"], L["r_mean"]), (L["p_max"], L["r_max"])})


def plan(bench: Bench) -> list[dict[str, Any]]:
    S = bench.cfg.teacher.max_batch_samples
    k0 = bench.cfg.teacher.top_k
    ks = [k0] + sorted({k for k in (1, min(bench.vocab, 4 * k0)) if k != k0})
    groups = []
    for k in ks:
        specs = [{"stage": "teacher", "samples": s, "prompt": p, "response": r, "tokens": s * (p + r), "top_k": k}
                 for s in sorted({1, max(1, S // 4), max(1, S // 2), S}) for p, r in length_pairs(bench)]
        groups.append(spread(specs, ("samples", "prompt")))
    return [s for g in groups for s in g]


def measure(bench: Bench, spec: dict[str, Any]) -> float:
    reqs = bench.score_requests(bench.generated(spec["prompt"], spec["response"], spec["samples"]))
    scorer = bench.scorer(spec["top_k"])
    return median_seconds(lambda: scorer.score(reqs), bench, warmup=1, repeats=3)
