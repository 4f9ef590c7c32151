"""Fit ``SimCosts`` to micro-benchmark points (``calibration.profilers``).

A point is a mapping ``{"stage": ..., <features>, "seconds": t}``. Every stage of the parametric
cost model (``sim.costs.ParametricCosts``) is linear in its parameters, so each fit is a
non-negative least-squares problem, solved in *relative* terms: with design matrix ``X`` and
times ``y`` it minimises ``sum_i ((X_i . theta - y_i) / y_i)^2`` over ``theta >= 0`` (rows are
divided by ``y_i``; columns are scaled to unit norm before ``scipy.optimize.nnls`` and the
coefficients scaled back). Exact linear data is recovered exactly; the reported fit error is the
MAPE, ``mean_i |X_i . theta - y_i| / y_i``.

=========  ===============================  ==========================================================
stage      features of a point              model (SimCosts parameters)
=========  ===============================  ==========================================================
decode     ``n`` active seqs, ``kv`` ctx    ``t = decode_step_s + decode_per_seq_s * n``
prefill    ``n`` seqs, ``tokens``            ``t = step(n) + prefill_per_token_s * tokens``
teacher    ``tokens``, ``top_k``            ``t = teacher_fixed_s + teacher_per_token_s * tokens``
learner    ``tokens``, ``micro_batches``    ``t = learner_fixed_s + learner_per_token_s * tokens``
sync       ``bytes`` of the state dict      ``t = sync_fixed_s + bytes / sync_bytes_per_s``
=========  ===============================  ==========================================================

(teacher / learner ``tokens`` = prompt + response tokens of the batch, as the simulator counts
them.) A prefill point is one ``generate`` call that emits one token: one forward over the
prompts plus one sampling step. The simulator charges ``prefill_per_token_s * tokens`` *on top
of* the decode steps of a wave, and the engine's prefill forward takes the place of the first
of them, so the fit gives ``prefill_per_token_s`` the time beyond one decode step
``step(n) = decode_step_s + decode_per_seq_s * n`` (from the decode fit; 0 without one). The teacher and learner fits use only the points at the config's ``teacher.top_k`` and
``learner.micro_batch_size``, which is what the trainer runs. What the simulator leaves out is
fitted too and reported as *extras* (not added to SimCosts):

- ``decode_per_kv_token_s``: ``c`` in ``t = a + b*n + c*n*kv`` (seconds per cached token read per
  step); ``kv_share`` = ``c*n*kv / t`` at the largest measured ``n*kv``: if small, ignoring the
  KV length (as ``ParametricCosts`` does) costs little;
- ``teacher_per_token_topk_s``: ``d`` in ``t = f + c*tokens + d*tokens*top_k``;
- ``learner_per_micro_batch_s``: ``m`` in ``t = f + c*tokens + m*micro_batches``.

``dispatch_s`` (the Ray RPC latency) cannot be measured without Ray: the caller keeps a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
from scipy.optimize import nnls

from calibration.run_data import StageFit

STAGES = ("decode", "prefill", "teacher", "learner", "sync")

# stage -> (design-matrix columns as functions of a point, SimCosts parameter names)
_COLUMNS: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {
    "decode": ((lambda p: 1.0, lambda p: p["n"]), ("decode_step_s", "decode_per_seq_s")),
    "prefill": ((lambda p: p["tokens"],), ("prefill_per_token_s",)),
    "teacher": ((lambda p: 1.0, lambda p: p["tokens"]), ("teacher_fixed_s", "teacher_per_token_s")),
    "learner": ((lambda p: 1.0, lambda p: p["tokens"]), ("learner_fixed_s", "learner_per_token_s")),
    "sync": ((lambda p: 1.0, lambda p: p["bytes"]), ("sync_fixed_s", "sync_inv_bandwidth")),
}


def nnls_relative(X: np.ndarray, y: np.ndarray, offset: Optional[np.ndarray] = None) -> tuple[np.ndarray, float]:
    """``theta >= 0`` minimising ``sum ((offset + X theta - y) / y)^2``; returns ``(theta, MAPE)``."""
    X, y = np.asarray(X, float), np.asarray(y, float)
    off = np.zeros_like(y) if offset is None else np.asarray(offset, float)
    w = 1.0 / np.maximum(np.abs(y), 1e-12)
    A = X * w[:, None]
    scale = np.linalg.norm(A, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(A / scale, (y - off) * w)
    theta = coef / scale
    mape = float(np.mean(np.abs(off + X @ theta - y) * w)) if len(y) else math.nan
    return theta, mape


@dataclass
class ProfileFit:
    stages: dict[str, StageFit] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def costs(self, model_bytes: float, dispatch_s: float) -> dict[str, float]:
        """The ``sim.costs`` mapping (``sync_bytes_per_s`` from the fitted inverse bandwidth)."""
        out: dict[str, float] = {}
        for fit in self.stages.values():
            out.update({k: v for k, v in fit.params.items() if k != "sync_inv_bandwidth"})
        if "sync" in self.stages:
            inv = self.stages["sync"].params["sync_inv_bandwidth"]
            out["sync_bytes_per_s"] = 1.0 / inv if inv > 0 else 1e15  # (no measurable size effect)
            out["model_bytes"] = float(model_bytes)
        out["dispatch_s"] = float(dispatch_s)
        return out


def stage_points(points: Sequence[dict[str, Any]], stage: str, *, top_k: Optional[int] = None,
                 micro_batch_size: Optional[int] = None) -> list[dict[str, Any]]:
    """The points of ``stage`` that the SimCosts fit uses (the config's top-k / micro-batch size)."""
    out = [p for p in points if p["stage"] == stage]
    if stage == "teacher" and top_k is not None:
        out = [p for p in out if p["top_k"] == top_k]
    if stage == "learner" and micro_batch_size is not None:
        out = [p for p in out if p["micro_batch_size"] == micro_batch_size]
    return out


def fit_stage(stage: str, points: Sequence[dict[str, Any]], step: Optional[StageFit] = None) -> Optional[StageFit]:
    """Fit one stage; ``step`` (the decode fit) gives the per-step offset of prefill points."""
    cols, names = _COLUMNS[stage]
    if len(points) < len(cols):
        return None
    X = np.array([[c(p) for c in cols] for p in points], float)
    if np.linalg.matrix_rank(X) < len(cols):
        return None
    offset = None
    if stage == "prefill" and step is not None:
        offset = np.array([step.params["decode_step_s"] + step.params["decode_per_seq_s"] * p["n"] for p in points])
    theta, mape = nnls_relative(X, np.array([p["seconds"] for p in points]), offset)
    return StageFit({n: float(v) for n, v in zip(names, theta)}, mape, len(points))


def _extra(points: Sequence[dict[str, Any]], cols: list[Any], name: str) -> Optional[dict[str, Any]]:
    X = np.array([[c(p) for c in cols] for p in points], float) if points else np.zeros((0, len(cols)))
    if len(points) <= len(cols) or np.linalg.matrix_rank(X) < len(cols):
        return None
    theta, mape = nnls_relative(X, np.array([p["seconds"] for p in points]))
    big = int(np.argmax(X[:, -1]))
    share = float(theta[-1] * X[big, -1] / max(float(X[big] @ theta), 1e-12))
    return {"value": float(theta[-1]), "mape": mape, "n": len(points), "share_at_max": share}


def fit_points(points: Sequence[dict[str, Any]], *, top_k: Optional[int] = None,
               micro_batch_size: Optional[int] = None) -> ProfileFit:
    """Fit every stage that has enough points (see the module docstring)."""
    out = ProfileFit()
    for stage in STAGES:
        fit = fit_stage(stage, stage_points(points, stage, top_k=top_k, micro_batch_size=micro_batch_size),
                        out.stages.get("decode"))
        if fit is not None:
            out.stages[stage] = fit
    one = lambda p: 1.0  # noqa: E731
    extras = {
        "decode_per_kv_token_s": ([p for p in points if p["stage"] == "decode"],
                                  [one, lambda p: p["n"], lambda p: p["n"] * p["kv"]]),
        "teacher_per_token_topk_s": ([p for p in points if p["stage"] == "teacher"],
                                     [one, lambda p: p["tokens"], lambda p: p["tokens"] * p["top_k"]]),
        "learner_per_micro_batch_s": ([p for p in points if p["stage"] == "learner"],
                                      [one, lambda p: p["tokens"], lambda p: p["micro_batches"]]),
    }
    for name, (pts, cols) in extras.items():
        e = _extra(pts, cols, name)
        if e is not None:
            out.extras[name] = e
    return out


def predict(costs: Any, point: dict[str, Any]) -> float:
    """Seconds ``ParametricCosts`` with ``costs`` (a ``SimCosts``) assigns to a profiled point."""
    s = point["stage"]
    if s == "decode":
        return costs.decode_step_s + costs.decode_per_seq_s * point["n"]
    if s == "prefill":
        return costs.decode_step_s + costs.decode_per_seq_s * point["n"] + costs.prefill_per_token_s * point["tokens"]
    if s in ("teacher", "learner"):
        return getattr(costs, f"{s}_fixed_s") + getattr(costs, f"{s}_per_token_s") * point["tokens"]
    if s == "sync":
        return costs.sync_fixed_s + point["bytes"] / costs.sync_bytes_per_s
    raise ValueError(f"unknown stage {s!r}")
