"""Prediction intervals for a run's throughput: the simulation's spread over seeds plus the
real trainer's run-to-run scatter on this host.

A measured run's rate is modelled as ``X = S * F``: ``S`` the simulated samples/s of a random
seed (the workload's randomness: prompts, lengths, per-stage noise), ``F`` an independent
whole-run factor for what no simulation sees (the host's drift between runs, OS scheduling),
``log F ~ Normal(0, sigma^2)`` with ``sigma^2 = log(1 + run_cv^2)`` (``sim.costs.run_cv``: the
coefficient of variation of repeated runs of one config). The costs themselves were fitted to
``k`` such runs (``sim.costs.calibration_runs``), so their level is off by the mean of ``k``
run factors, another ``sigma^2 / k`` of variance: calibrated on one run, a prediction inherits
that run's luck as well as facing the new run's. On the log scale, with the seeds' log-rates
``y_1..y_n`` (mean ``m``, sd ``s``), a new run's ``log X`` has the prediction interval

    m  ±  sqrt( t_{(1+q)/2, n-1}^2 * s^2 (1 + 1/n)  +  u^2 * sigma^2 (1 + 1/k)  +  z_{(1+q)/2}^2 * tau^2 )

with ``u = z_{(1+q)/2}`` when ``run_cv`` is known and ``u = t_{(1+q)/2, nu}`` when it was measured
on ``nu`` degrees of freedom (``sim.costs.run_cv_dof``: three calibration runs give nu = 2 and
u = 2.92 against z = 1.64 at 90%; their run_cv, 1.7% one morning, was a third of the 4.3% the
next 33 runs scattered). ``tau^2 = log(1 + model_cv^2)`` is the simulator's own error on a
layout its calibration did not show (``sim.costs.model_cv``), which no spread of seeds or runs
contains; ``bench/fidelity.py`` measures it as the RMS log error of its predictions, less the
measured runs' own scatter.

(each part at its own quantile: Student t for the seeds' estimated spread, normal for the
known run factor; with one seed only the run factor's part).

and the interval of ``X`` is its exponential. ``coverage`` counts how many measurements fall
inside their intervals (what the fidelity benchmark reports beside the point errors).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Interval:
    point: float  # geometric mean of the seeds' rates
    low: float
    high: float
    level: float
    seeds: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def describe(self, fmt: str = ".1f") -> str:
        return f"{self.point:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}] ({self.level:.0%}, {self.seeds} seed" \
               f"{'s' if self.seeds != 1 else ''})"


def throughput_interval(rates: Iterable[float], run_cv: float, level: float = 0.9, *,
                        calibration_runs: float = math.inf, run_cv_dof: int | None = None,
                        model_cv: float = 0.0) -> Interval:
    """The level-``level`` prediction interval of a run's samples/s (module docstring);
    ``calibration_runs`` = ``k`` (infinite: costs known exactly, the run factor alone),
    ``run_cv_dof`` = ``nu`` (None: run_cv known), ``model_cv`` gives ``tau``."""
    from scipy import stats

    ys = [math.log(r) for r in rates if r > 0]
    if not ys:
        raise ValueError("no positive simulated rate to build an interval from")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if calibration_runs < 1:
        raise ValueError(f"calibration_runs must be at least 1, got {calibration_runs}")
    sigma2 = math.log1p(run_cv ** 2) * (1 + 1 / calibration_runs)
    m, n = statistics.fmean(ys), len(ys)
    q = (1 + level) / 2
    seeds_part = stats.t.ppf(q, n - 1) ** 2 * statistics.variance(ys) * (1 + 1 / n) if n >= 2 else 0.0
    u = stats.norm.ppf(q) if run_cv_dof is None else stats.t.ppf(q, run_cv_dof)
    half = math.sqrt(seeds_part + u ** 2 * sigma2 + stats.norm.ppf(q) ** 2 * math.log1p(model_cv ** 2))
    return Interval(math.exp(m), math.exp(m - half), math.exp(m + half), level, n)


def costs_interval(rates: Iterable[float], costs: object, level: float = 0.9) -> Interval:
    """``throughput_interval`` with a config's ``sim.costs``: its ``run_cv``, ``run_cv_dof``,
    ``calibration_runs`` and ``model_cv``."""
    c = costs
    return throughput_interval(rates, c.run_cv, level, calibration_runs=c.calibration_runs,  # type: ignore[attr-defined]
                               run_cv_dof=c.run_cv_dof, model_cv=c.model_cv)  # type: ignore[attr-defined]


def scatter_note(costs: object) -> str:
    """How wide the run factor is, for the line under a printed interval."""
    c = costs
    dof = c.run_cv_dof  # type: ignore[attr-defined]
    return (f"run-to-run scatter sim.costs.run_cv={c.run_cv:.1%}"  # type: ignore[attr-defined]
            + (f" (measured on {dof} degrees of freedom)" if dof else "")
            + f", costs averaged over sim.costs.calibration_runs={c.calibration_runs}"  # type: ignore[attr-defined]
            + f", the simulator's own error sim.costs.model_cv={c.model_cv:.1%}")  # type: ignore[attr-defined]


def coverage(pairs: Iterable[tuple[Interval, float]]) -> float:
    """Share of measurements inside their intervals."""
    hits = [iv.contains(x) for iv, x in pairs]
    return sum(hits) / len(hits) if hits else math.nan
