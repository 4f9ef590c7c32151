"""Fit the learner's cost, data-parallel gradient traffic included, to the steps of one or more runs.

A run's learner on ``N = len(layout.learner.devices)`` devices (its ``config.yaml``) runs ``N``
ranks over ``T / N`` tokens each and then exchanges ``G`` gradient bytes (``sim.parametric``,
``sim.collectives``). Each ``train`` span (``T`` tokens, uncontended ``work`` seconds) is one row of

    work = learner_fixed_s + learner_per_token_s * T / N
           + (1 / allreduce_bytes_per_s) * k (N-1)/N * G + allreduce_latency_s * k (N-1)

(``k = 2`` ddp, 3 fsdp; both traffic columns are 0 for ``N = 1``), a non-negative least-squares
fit (``scipy.optimize.nnls``, columns scaled to unit norm). What the runs cannot tell apart is
held at the config's value (``held``), dropping columns from the last while the design matrix
is rank-deficient:

- only ``N = 1`` runs: both traffic columns are zero, and the all-reduce terms keep their values;
- one ``N > 1`` and no other: the traffic is a constant, inseparable from ``learner_fixed_s``;
  the config's all-reduce terms are held and their time taken out of the fixed cost, so that
  the fit still reproduces the run;
- ``N = 1`` and ``N = 2`` (``calibrate --from-run DP1 --from-run DP2``): the traffic's time at
  ``N = 2`` is measured; with one traffic volume the latency is held and the bandwidth fitted;
- a third ``N`` (or another model size) separates the latency from the bandwidth as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy.optimize import nnls

from asyncopd.config import load_config
from asyncopd.config.schema import SimCosts
from calibration.run_data import StageFit, _cv
from sim.collectives import PASSES
from sim.parametric import grad_bytes_of

NAMES = ("learner_fixed_s", "learner_per_token_s", "allreduce_inv_bandwidth", "allreduce_latency_s")


@dataclass
class LearnerSteps:
    """The learner steps of one run: its ``N``, strategy and gradient bytes, tokens and work per step."""
    run: str
    n: int
    strategy: str
    grad_bytes: float
    tokens: np.ndarray
    work: np.ndarray

    @classmethod
    def of_run(cls, run_dir: str | Path, spans: list[dict], work: Callable[[dict], float]) -> "LearnerSteps":
        """``spans``: the run's ``train`` spans; ``work(span)``: its uncontended seconds. Without
        a ``config.yaml`` the learner counts as one device."""
        cfg_file = Path(run_dir) / "config.yaml"
        n, strategy, grad = 1, "ddp", 0.0
        if cfg_file.is_file():
            cfg = load_config(cfg_file)
            n, strategy = len(cfg.layout.learner.devices), cfg.learner.strategy
            grad = (grad_bytes_of(cfg) or 0.0) if n > 1 else 0.0
        return cls(str(run_dir), n, strategy, grad, np.array([float(s["args"]["tokens"]) for s in spans]),
                   np.array([work(s) for s in spans], float))

    def rows(self) -> np.ndarray:
        k = PASSES[self.strategy] if self.n > 1 else 0
        traffic = k * (self.n - 1) / self.n * self.grad_bytes
        return np.column_stack([np.ones_like(self.tokens), self.tokens / self.n,
                                np.full_like(self.tokens, traffic), np.full_like(self.tokens, k * (self.n - 1.0))])


def fit_learner(runs: list[LearnerSteps], held: Optional[SimCosts] = None) -> tuple[Optional[StageFit], list[str]]:
    """The learner stage over ``runs`` (module docstring) and notes on what it could not separate.
    ``held``: the values of the terms the runs cannot tell apart (default: ``SimCosts()``)."""
    runs = [r for r in runs if len(r.tokens)]
    if sum(len(r.tokens) for r in runs) < 2:
        return None, []
    held = held or SimCosts()
    X, y = np.vstack([r.rows() for r in runs]), np.concatenate([r.work for r in runs])
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    cols = list(range(len(NAMES)))
    while len(cols) > 1 and np.linalg.matrix_rank(X[:, cols] / scale[cols]) < len(cols):
        cols.pop()
    fixed = {"allreduce_inv_bandwidth": 1.0 / held.allreduce_bytes_per_s, "allreduce_latency_s": held.allreduce_latency_s}
    kept = [j for j in range(len(NAMES)) if j not in cols]
    offset = X[:, kept] @ np.array([fixed[NAMES[j]] for j in kept]) if kept else np.zeros_like(y)
    coef, _ = nnls(X[:, cols] / scale[cols], y - offset)
    theta = dict(zip((NAMES[j] for j in cols), coef / scale[cols]))
    pred = offset + X[:, cols] @ np.array([theta[NAMES[j]] for j in cols])
    rel = (pred - y) / np.maximum(y, 1e-9)
    params = {k: float(v) for k, v in theta.items() if k != "allreduce_inv_bandwidth"}
    if "allreduce_inv_bandwidth" in theta:
        inv = theta["allreduce_inv_bandwidth"]
        params["allreduce_bytes_per_s"] = 1.0 / inv if inv > 0 else 1e15  # (no measurable size effect)
    if any(r.n > 1 for r in runs):  # the fit leaned on the held values: the profile carries them
        params.setdefault("allreduce_bytes_per_s", held.allreduce_bytes_per_s)
        params.setdefault("allreduce_latency_s", held.allreduce_latency_s)
    params["learner_cv"] = _cv(y / np.maximum(pred, 1e-12))
    fit = StageFit(params, float(np.mean(np.abs(rel))), len(y), float(np.mean(rel ** 2)))
    return fit, _notes(runs, [NAMES[j] for j in kept], held)


def _notes(runs: list[LearnerSteps], kept: list[str], held: SimCosts) -> list[str]:
    ns = sorted({r.n for r in runs})
    if ns == [1]:
        return ["learner: every run's learner has one device, so allreduce_bytes_per_s and allreduce_latency_s keep "
                "their values; a run with the learner on two devices fits them (asyncopd calibrate --from-run "
                "DP1_RUN --from-run DP2_RUN)"]
    if "allreduce_inv_bandwidth" in kept:
        return [f"learner: all runs have N={ns[-1]}, whose gradient all-reduce takes a constant time that cannot be "
                f"told from learner_fixed_s; allreduce_bytes_per_s={held.allreduce_bytes_per_s:g} and "
                f"allreduce_latency_s={held.allreduce_latency_s:g} are kept (and their time taken out of "
                f"learner_fixed_s); add a run with the learner on one device to measure them"]
    if "allreduce_latency_s" in kept:
        return [f"learner: allreduce_latency_s={held.allreduce_latency_s:g} is kept (runs at N={ns} show one "
                f"gradient volume per N; a third N separates the latency from allreduce_bytes_per_s)"]
    return []
