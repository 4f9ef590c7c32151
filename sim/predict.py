"""Predicted speedup of one scheduling policy over another, with an interval over seeds.

For each policy the same config is simulated under seeds ``s_0 .. s_{n-1}`` (the seed drives
the response lengths: the task's prompts or the sampled lengths). Speedups are paired by seed,
``r_i = thr_B(s_i) / thr_A(s_i)``, and reported as the mean with a two-sided 95% Student-t
interval ``mean ± t_{0.975, n-1} * sd / sqrt(n)`` (scipy.stats.t).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Callable

from asyncopd.config.schema import OPDConfig
from asyncopd.control.policies import parse_policy
from sim.driver import simulate


@dataclass
class PolicyPrediction:
    policy: str
    throughput: list[float]  # samples/s per seed
    staleness_mean: list[float]
    utilisation: dict[str, float]

    @property
    def mean_throughput(self) -> float:
        return statistics.fmean(self.throughput)


@dataclass
class Speedup:
    baseline: str
    policy: str
    mean: float
    low: float
    high: float
    n: int


def t_interval(xs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    from scipy import stats

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m, m
    half = stats.t.ppf(0.5 + level / 2, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def predict(cfg: OPDConfig, policies: list[str], seeds: list[int],
            on_progress: Callable[[], None] | None = None) -> tuple[list[PolicyPrediction], list[Speedup]]:
    preds = []
    for text in policies:
        policy = parse_policy(text).describe()
        c = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"policy": policy})}, deep=True)
        thr, stale, util = [], [], {}
        for seed in seeds:
            s = simulate(c, None, seed=seed, progress=False)
            thr.append(s["samples_per_s"])
            stale.append(s["staleness"]["mean"] or 0.0)
            for k, v in s["utilisation"].items():
                util[k] = util.get(k, 0.0) + v / len(seeds)
            if on_progress:
                on_progress()
        preds.append(PolicyPrediction(policy, thr, stale, util))
    base = preds[0]
    speedups = []
    for p in preds[1:]:
        ratios = [b / a for a, b in zip(base.throughput, p.throughput)]
        m, lo, hi = t_interval(ratios)
        speedups.append(Speedup(base.policy, p.policy, m, lo, hi, len(ratios)))
    return preds, speedups
