"""Fit the simulator's parametric cost model (``SimCosts``) to a recorded run.

Every stage is linear in its parameters, so each is a small non-negative least-squares fit
(``scipy.optimize.nnls``) on what the run directory already holds:

- learner:  ``work = learner_fixed_s + learner_per_token_s * tokens`` over ``train`` spans;
- teacher:  ``work = teacher_fixed_s + teacher_per_token_s * tokens`` over ``score`` spans;
- sync:     ``paused = sync_fixed_s`` (mean pause of ``sync`` spans; model size folded in);
- dispatch: ``dispatch_s`` = median gap between issuing an update and the learner starting it;
- rollout:  a wave of sequences with response lengths ``L_1..L_m`` and prompt tokens ``P``
  started together; with ``t_step(n) = a + b*n`` the sequence of length ``L_j`` ends after

      T_j = p * P + a * L_j + b * sum_k min(L_k, L_j)      (+ any sync pause inside the wave)

  so ``(p, a, b)`` = (``prefill_per_token_s``, ``decode_step_s``, ``decode_per_seq_s``) come
  from one regression over all finished sequences, after subtracting the time the worker
  spent in weight syncs during the sequence.

``work`` is a span's duration with device sharing taken out (``calibration/contention.py``):
on a layout where workers share devices the sharing penalty ``colocation_factor`` is fitted
first, as the value that makes these linear models fit best.

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
from asyncopd.config.placement import placement
from calibration.contention import PHI_GRID, DeviceCrowd, busy_intervals, merge
from calibration.profile import model_spec, profile_overrides, write_profile_dict  # noqa: F401 (re-export)


@dataclass
class StageFit:
    params: dict[str, float]
    mape: float
    n: int
    sq_rel_err: float = 0.0  # mean squared relative residual (what the contention fit minimises)


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


def _linear(X: np.ndarray, y: np.ndarray, names: list[str], cv_name: str) -> StageFit:
    """NNLS fit of ``y ~ X @ coef``; ``cv_name`` gets the scatter of ``y / prediction`` (its
    coefficient of variation), which the simulator replays as noise (``JitteredCosts``)."""
    coef, _ = nnls(X, y)
    pred = X @ coef
    rel = (pred - y) / np.maximum(y, 1e-9)
    mape = float(np.mean(np.abs(rel))) if len(y) else float("nan")
    params = {n: float(c) for n, c in zip(names, coef)}
    params[cv_name] = _cv(y / np.maximum(pred, 1e-12))
    return StageFit(params, mape, len(y), float(np.mean(rel ** 2)) if len(y) else 0.0)


def _cv(x: np.ndarray) -> float:
    """Coefficient of variation of a lognormal fitted robustly to ``x`` (rounded to 0.01):
    ``sigma = 1.4826 * MAD(log x)``, ``cv = sqrt(exp(sigma^2) - 1)``. The median absolute
    deviation ignores the rare stalls (first syncs, garbage collections) that would otherwise
    dominate a plain standard deviation. An exact model gives 0."""
    x = x[x > 0]
    if len(x) < 2:
        return 0.0
    logs = np.log(x)
    sigma = 1.4826 * float(np.median(np.abs(logs - np.median(logs))))
    return round(float(np.sqrt(np.expm1(sigma * sigma))), 2)


def _spans(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and e.get("name") == name]


def _paused(sync_span: dict[str, Any]) -> float:
    """Seconds the worker stopped generating for this sync (``paused_s``: recorded by the
    simulator and, for the torch backend, by the trainer); otherwise the whole span, an upper
    bound."""
    paused = sync_span["args"].get("paused_s")
    return float(paused) if paused is not None else sync_span["dur"] / 1e6


def _pause_interval(sync_span: dict[str, Any]) -> tuple[float, float]:
    """When the worker stood still for this sync: the last ``_paused`` seconds of the span."""
    end = (sync_span["ts"] + sync_span["dur"]) / 1e6
    return end - _paused(sync_span), end


def _crowd(run_dir: Path, events: list[dict[str, Any]], syncs: list[dict[str, Any]]) -> DeviceCrowd | None:
    """Who was busy on which device, from the run's layout (``config.yaml``) and its trace;
    None when the run has no config (then stage times are taken as measured)."""
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return None
    from asyncopd.config import load_config

    busy = busy_intervals(events)
    for s in syncs:  # loading weights occupies the rollout worker's devices too
        busy.setdefault(s["args"]["worker"], []).append(_pause_interval(s))
    busy = {w: merge(iv) for w, iv in busy.items()}
    return DeviceCrowd(busy, placement(load_config(cfg_file).layout))


def fit_run(run_dir: str | Path) -> RunCalibration:
    """Fit every stage of ``SimCosts`` to a run directory. When workers share devices, the
    stage times are first turned into uncontended work (``calibration/contention.py``) with the
    sharing penalty ``colocation_factor`` that fits best."""
    d = Path(run_dir)
    events = read_trace(d / "trace.json")
    samples = read_jsonl(d / "samples.jsonl")
    syncs = _spans(events, "sync")
    cal = RunCalibration(str(d))
    crowd = _crowd(d, events, syncs)
    phi = 1.0
    if crowd is not None and crowd.shared:
        phi, cal.stages["contention"] = _fit_colocation(crowd, events, samples, syncs)
    for stage, prefix in (("train", "learner"), ("score", "teacher")):
        fit = _fit_stage(_spans(events, stage), prefix, crowd, phi)
        if fit is not None:
            cal.stages[prefix] = fit
    if syncs:
        durs = np.array([_paused(s) for s in syncs])
        cal.stages["sync"] = StageFit({"sync_fixed_s": float(durs.mean()), "model_bytes": 0.0, "sync_cv": _cv(durs)},
                                      float(np.mean(np.abs(durs - durs.mean()) / np.maximum(durs, 1e-9))), len(durs))
    steps = read_jsonl(d / "log.jsonl")
    if steps:  # the learner is idle when an update is issued: the gap is pure dispatch latency
        gaps = np.array([r["t_start"] - r["t_issue"] for r in steps])
        med = float(np.median(gaps))
        cal.stages["dispatch"] = StageFit({"dispatch_s": med, "dispatch_cv": _cv(gaps)},
                                          float(np.mean(np.abs(gaps - med) / max(med, 1e-9))), len(gaps))
    rollout = _fit_rollout(samples, syncs, crowd, phi)
    if rollout is not None:
        cal.stages["rollout"] = rollout
    return cal


def _work(crowd: DeviceCrowd | None, worker: str, t0: float, t1: float, phi: float) -> float:
    return t1 - t0 if crowd is None else crowd.work(worker, t0, t1, phi)


def _fit_stage(spans: list[dict[str, Any]], prefix: str, crowd: DeviceCrowd | None, phi: float) -> StageFit | None:
    """``work = {prefix}_fixed_s + {prefix}_per_token_s * tokens`` over the stage's spans."""
    if len(spans) < 2:
        return None
    X = np.array([[1.0, s["args"]["tokens"]] for s in spans])
    y = np.array([_work(crowd, s["args"]["worker"], s["ts"] / 1e6, (s["ts"] + s["dur"]) / 1e6, phi) for s in spans])
    return _linear(X, y, [f"{prefix}_fixed_s", f"{prefix}_per_token_s"], f"{prefix}_cv")


def _fit_colocation(crowd: DeviceCrowd, events: list[dict[str, Any]], samples: list[dict[str, Any]],
                    syncs: list[dict[str, Any]]) -> tuple[float, StageFit]:
    """The ``phi`` on ``PHI_GRID`` whose stage fits leave the smallest squared relative
    residual over every span of a shared worker (the others do not depend on ``phi``); 1 when
    no teacher or learner span overlapped another worker on its devices."""
    overlapped = sum(crowd.crowded(s["args"]["worker"], s["ts"] / 1e6, (s["ts"] + s["dur"]) / 1e6)
                     for s in events if s.get("ph") == "X" and s.get("name") in ("train", "score")
                     and s["args"]["worker"] in crowd.shared)
    if not overlapped:  # e.g. sync: the sharing roles never ran at once, so phi cannot be seen
        return 1.0, StageFit({"colocation_factor": 1.0}, 0.0, 0)
    stages = [(name, prefix) for name, prefix in (("train", "learner"), ("score", "teacher"))
              if any(w.startswith(prefix) for w in crowd.shared)]
    rollout_shared = any(w.startswith("rollout") for w in crowd.shared)
    best: tuple[float, float, float, int] | None = None
    for phi in PHI_GRID:
        sse, abs_err, n = 0.0, 0.0, 0
        fits = [_fit_stage(_spans(events, name), prefix, crowd, float(phi)) for name, prefix in stages]
        if rollout_shared:
            fits.append(_fit_rollout(samples, syncs, crowd, float(phi)))
        for fit in fits:
            if fit is not None:
                sse += fit.sq_rel_err * fit.n
                abs_err += fit.mape * fit.n
                n += fit.n
        if n and (best is None or sse < best[1] - 1e-15):
            best = (float(phi), sse, abs_err / n, n)
    if best is None:
        return 1.0, StageFit({"colocation_factor": 1.0}, float("nan"), 0)
    return best[0], StageFit({"colocation_factor": best[0]}, best[2], best[3])


def _fit_rollout(samples: list[dict[str, Any]], syncs: list[dict[str, Any]], crowd: DeviceCrowd | None = None,
                 phi: float = 1.0) -> StageFit | None:
    waves: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in samples:
        if r["gen_start"] is not None and r["gen_end"] is not None and r["status"] != "aborted" \
                and r["response_tokens"] > 0:
            waves[(r["worker"], round(r["gen_start"], 6))].append(r)
    pauses: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in syncs:
        pauses[s["args"]["worker"]].append(_pause_interval(s))
    rows, ys = [], []
    for (worker, start), wave in waves.items():
        prompt = sum(r["prompt_tokens"] for r in wave)
        lengths = [r["response_tokens"] for r in wave]
        for r in wave:
            L = r["response_tokens"]
            paused = sum(max(0.0, min(e, r["gen_end"]) - max(s, start)) for s, e in pauses[worker])
            rows.append([prompt, L, sum(min(k, L) for k in lengths)])
            ys.append(_work(crowd, worker, start, r["gen_end"], phi) - paused)
    if len(rows) < 3:
        return None
    return _linear(np.array(rows, dtype=float), np.array(ys), ["prefill_per_token_s", "decode_step_s",
                                                               "decode_per_seq_s"], "decode_cv")


def write_profile(cal: RunCalibration, path: str | Path) -> Path:
    """Save as YAML: the fitted ``sim.costs`` plus per-stage fit errors and the source run, with the
    shared metadata block (``calibration.profile``) and the run's config when it has one (so
    ``calibrate --check`` can re-measure its models)."""
    import yaml

    data: dict[str, Any] = {"source": "run", **cal.as_dict()}
    cfg_file = Path(cal.run_dir) / "config.yaml"
    if cfg_file.is_file():
        try:
            config = yaml.safe_load(cfg_file.read_text())
        except yaml.YAMLError:
            config = None
        if isinstance(config, dict):
            models = config.get("models") or {}
            data["model"] = {"student": model_spec(models.get("student")), "teacher": model_spec(models.get("teacher")),
                             "dtype": models.get("dtype")}
            data["config"] = config
    return write_profile_dict(data, path)


__all__ = ["RunCalibration", "StageFit", "fit_run", "profile_overrides", "write_profile"]
