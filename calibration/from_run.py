"""Fit the simulator's parametric cost model (``SimCosts``) to a recorded run.

Every stage is linear in its parameters, so each is a small non-negative least-squares fit
(``scipy.optimize.nnls``) on what the run directory already holds:

- learner:  ``dur = learner_fixed_s + learner_per_token_s * tokens`` over ``train`` spans;
- teacher:  ``dur = teacher_fixed_s + teacher_per_token_s * tokens`` over ``score`` spans;
- sync:     ``dur = sync_fixed_s`` (mean of ``sync`` spans; the model size term is folded in);
- dispatch: ``dispatch_s`` = median gap between issuing an update and the learner starting it;
- rollout:  a wave of sequences with response lengths ``L_1..L_m`` and prompt tokens ``P``
  started together; with ``t_step(n) = a + b*n`` the sequence of length ``L_j`` ends after

      T_j = p * P + a * L_j + b * sum_k min(L_k, L_j)      (+ any sync pause inside the wave)

  so ``(p, a, b)`` = (``prefill_per_token_s``, ``decode_step_s``, ``decode_per_seq_s``) come
  from one regression over all finished sequences, after subtracting the time the worker
  spent in weight syncs during the sequence.

The fit error of each stage is reported as MAPE over its observations.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from asyncopd.trace.schema import read_jsonl, read_trace


@dataclass
class StageFit:
    params: dict[str, float]
    mape: float
    n: int


@dataclass
class RunCalibration:
    run_dir: str
    stages: dict[str, StageFit] = field(default_factory=dict)

    def costs(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for fit in self.stages.values():
            out.update(fit.params)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"source_run": self.run_dir,
                "fit": {k: {"params": v.params, "mape": v.mape, "n": v.n} for k, v in self.stages.items()},
                "sim": {"costs": self.costs()}}


def _linear(X: np.ndarray, y: np.ndarray, names: list[str]) -> StageFit:
    coef, _ = nnls(X, y)
    pred = X @ coef
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-9))) if len(y) else float("nan")
    return StageFit({n: float(c) for n, c in zip(names, coef)}, mape, len(y))


def _spans(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and e.get("name") == name]


def _paused(sync_span: dict[str, Any]) -> float:
    """Seconds the worker stopped generating for this sync: recorded by the simulator; for real
    runs (not measured yet) the whole span, an upper bound."""
    paused = sync_span["args"].get("paused_s")
    return float(paused) if paused is not None else sync_span["dur"] / 1e6


def fit_run(run_dir: str | Path) -> RunCalibration:
    d = Path(run_dir)
    events = read_trace(d / "trace.json")
    cal = RunCalibration(str(d))
    for stage, prefix in (("train", "learner"), ("score", "teacher")):
        spans = _spans(events, stage)
        if len(spans) >= 2:
            X = np.array([[1.0, s["args"]["tokens"]] for s in spans])
            y = np.array([s["dur"] / 1e6 for s in spans])
            cal.stages[prefix] = _linear(X, y, [f"{prefix}_fixed_s", f"{prefix}_per_token_s"])
    syncs = _spans(events, "sync")
    if syncs:
        durs = np.array([_paused(s) for s in syncs])
        cal.stages["sync"] = StageFit({"sync_fixed_s": float(durs.mean()), "model_bytes": 0.0},
                                      float(np.mean(np.abs(durs - durs.mean()) / np.maximum(durs, 1e-9))), len(durs))
    steps = read_jsonl(d / "log.jsonl")
    if steps:  # the learner is idle when an update is issued: the gap is pure dispatch latency
        gaps = np.array([r["t_start"] - r["t_issue"] for r in steps])
        med = float(np.median(gaps))
        cal.stages["dispatch"] = StageFit({"dispatch_s": med},
                                          float(np.mean(np.abs(gaps - med) / max(med, 1e-9))), len(gaps))
    rollout = _fit_rollout(read_jsonl(d / "samples.jsonl"), syncs)
    if rollout is not None:
        cal.stages["rollout"] = rollout
    return cal


def _fit_rollout(samples: list[dict[str, Any]], syncs: list[dict[str, Any]]) -> StageFit | None:
    waves: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in samples:
        if r["gen_start"] is not None and r["gen_end"] is not None and r["status"] != "aborted" \
                and r["response_tokens"] > 0:
            waves[(r["worker"], round(r["gen_start"], 6))].append(r)
    pauses: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in syncs:
        end = (s["ts"] + s["dur"]) / 1e6
        pauses[s["args"]["worker"]].append((end - _paused(s), end))
    rows, ys = [], []
    for (worker, start), wave in waves.items():
        prompt = sum(r["prompt_tokens"] for r in wave)
        lengths = [r["response_tokens"] for r in wave]
        for r in wave:
            L = r["response_tokens"]
            paused = sum(max(0.0, min(e, r["gen_end"]) - max(s, start)) for s, e in pauses[worker])
            rows.append([prompt, L, sum(min(k, L) for k in lengths)])
            ys.append(r["gen_end"] - start - paused)
    if len(rows) < 3:
        return None
    return _linear(np.array(rows, dtype=float), np.array(ys), ["prefill_per_token_s", "decode_step_s",
                                                               "decode_per_seq_s"])


def write_profile(cal: RunCalibration, path: str | Path) -> Path:
    """Save as YAML: the fitted ``sim.costs`` plus per-stage fit errors and the source run."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cal.as_dict(), sort_keys=False))
    return p


def profile_overrides(path: str | Path) -> list[str]:
    """``--set`` overrides that apply a saved profile's ``sim.costs`` to a config."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"calibration profile not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    costs = (data.get("sim") or {}).get("costs")
    if not isinstance(costs, dict):
        raise ValueError(f"{p}: no sim.costs mapping in this calibration profile")
    return [f"sim.costs.{k}={v!r}" for k, v in costs.items()]
