"""Fit the simulator's parametric cost model (``SimCosts``) to a recorded run.

Every stage is linear in its parameters, so each is a small non-negative least-squares fit
(``scipy.optimize.nnls``) on what the run directory already holds:

- learner:  ``work = learner_fixed_s + learner_per_token_s * tokens / N (+ gradient all-reduce)``
  over ``train`` spans, ``N`` the run's learner devices (``calibration/data_parallel.py``);
- teacher:  ``work = teacher_fixed_s + teacher_per_token_s * tokens`` over ``score`` spans;
- sync:     ``paused = sync_fixed_s`` (mean pause of ``sync`` spans, sharing taken out; model size folded in);
- dispatch: ``dispatch_s`` = mean gap between issuing an update and the learner starting it;
- return:   ``return_s`` = mean gap between a rollout wave's last ``gen_end`` and its delivery;
- rollout dispatch: ``rollout_dispatch_s`` = mean gap between an idle worker's last request and
  its wave starting; a real run's own ``call_latency`` (from each call's submission) replaces
  both dispatch gaps when it has one (``_submission_latencies``);
- rollout:  a wave of sequences with response lengths ``L_1..L_m`` and prompt tokens ``P``
  started together; with ``t_step(n) = a + b*n`` the sequence of length ``L_j`` ends after

      T_j = p * P + a * L_j + b * sum_k min(L_k, L_j)      (+ any sync pause inside the wave)

  so ``(p, a, b)`` = (``prefill_per_token_s``, ``decode_step_s``, ``decode_per_seq_s``) come
  from one regression over all finished sequences, after subtracting the time the worker
  spent in weight syncs during the sequence.

``work`` is a span's duration with device sharing taken out (``calibration/contention.py``):
on a layout where workers share devices the sharing penalty per pair of roles
(``colocation_pairs``) is fitted first, as the values that make these linear models fit best.
A run only shows the pairs its layout puts together; ``fit_runs`` (``calibration/multi_run.py``)
adds the pairs of further runs (e.g. a short run of the layout a planner chose) to a reference
run's costs.

The fit error of each stage is reported as MAPE over its observations.
"""

from __future__ import annotations

import json

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from asyncopd.config import load_config
from asyncopd.config.colocation import Sharing
from asyncopd.config.schema import DRIVER_EVENT_KINDS, SimCosts
from asyncopd.runtime.call_latency import stall_free_mean
from asyncopd.trace.schema import read_jsonl
from calibration.contention import PHI_GRID, DeviceCrowd
from calibration.continuous_rollout import COLUMNS as CONTINUOUS_COLUMNS, continuous_rows
from calibration.data_parallel import LearnerSteps, fit_learner
from calibration.profile import model_spec, profile_overrides, write_profile_dict  # noqa: F401 (re-export)
from calibration.run_data import (RunCalibration, StageFit, _crowd, _cv, _PairOverlap, _pause_interval,
                                  _read_run, _spans, run_unplaced_share, unplaced_cpu, unplaced_share)


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


def fit_run(run_dir: str | Path, sharing: Sharing | None = None) -> RunCalibration:
    """Fit every stage of ``SimCosts`` to a run directory. When workers share devices, the
    stage times are first turned into uncontended work (``calibration/contention.py``) with the
    sharing penalties (``colocation_pairs``) that fit best, or with ``sharing`` when it was
    measured (``calibrate --contention``: ``calibration/contention_probe.py``)."""
    d = Path(run_dir)
    events, samples, syncs = _read_run(d)
    cal = RunCalibration(str(d))
    crowd = _crowd(d, events, syncs)
    phi = Sharing(1.0)
    if sharing is not None:
        phi = sharing
        cal.stages["contention"] = StageFit({"colocation_factor": sharing.default,
                                             "colocation_pairs": {**sharing.pairs, **sharing.directed}},
                                            float("nan"), 0)
    elif crowd is not None and crowd.shared:
        overlap = _PairOverlap.of(crowd, events)
        phi, cal.stages["contention"] = _fit_colocation(crowd, events, samples, syncs, overlap)
        for pair, share in overlap.inseparable().items():
            if pair in phi.pairs:
                cal.notes.append(f"{pair}: busy together {share:.0%} of the time, so this run cannot tell its "
                                 f"colocation factor from the stage costs ({phi.pairs[pair]:g} is a guess); measure "
                                 f"it against a run that keeps them apart: asyncopd calibrate --from-run REFERENCE "
                                 f"--from-run {d}")
    learner, notes = fit_learner([learner_steps(d, events, crowd, phi)], _held_costs(d))
    if learner is not None:
        cal.stages["learner"] = learner
        cal.notes += notes
    teacher = _fit_stage(_spans(events, "score"), "teacher", crowd, phi)
    if teacher is not None:
        cal.stages["teacher"] = teacher
    if syncs:
        durs = np.array([_work(crowd, s["args"]["worker"], *_pause_interval(s), phi) for s in syncs])  # (uncontended)
        cal.stages["sync"] = StageFit({"sync_fixed_s": float(durs.mean()), "model_bytes": 0.0, "sync_cv": _cv(durs)},
                                      float(np.mean(np.abs(durs - durs.mean()) / np.maximum(durs, 1e-9))), len(durs))
    steps = read_jsonl(d / "log.jsonl")
    if steps:  # the learner is idle when an update is issued: the gap is pure dispatch latency
        gaps = np.array([r["t_start"] - r["t_issue"] for r in steps])
        cal.stages["dispatch"] = _latency_fit(gaps, "dispatch_s", "dispatch_cv")
    returns = _return_latencies(samples)
    if len(returns) >= 5:
        cal.stages["return"] = _latency_fit(returns, "return_s")
    waves = _wave_dispatch_gaps(samples)
    if len(waves) >= 5:
        cal.stages["rollout dispatch"] = _latency_fit(waves, "rollout_dispatch_s")
    _submission_latencies(d, cal)
    data = _continuous_data(samples, syncs) if _is_continuous(d) else _rollout_data(samples, syncs)
    rollout = _fit_rollout(data, crowd, phi)
    if rollout is not None:
        cal.stages["rollout"] = rollout
    driver = _driver_costs(d)
    if driver is not None:
        cal.stages["driver"] = driver
    share, measured = run_unplaced_share(d), unplaced_share(d) is not None  # (the load divided out above, on
    if share is not None and (share > 0 or measured):                        # a CPU run: the simulator puts it back)
        cal.stages["unplaced"] = StageFit({"unplaced_share": share}, float("nan"), int(measured))
    return cal


def _latency_fit(gaps: np.ndarray, name: str, cv_name: str | None = None) -> StageFit:
    """A latency the simulator draws as ``mean x lognormal factor of mean 1``: its mean
    without one-off stalls (``stall_free_mean``), with the robust scatter of ``gaps``."""
    mean = stall_free_mean([float(g) for g in gaps])
    params = {name: mean} | ({cv_name: _cv(gaps)} if cv_name else {})
    return StageFit(params, float(np.mean(np.abs(gaps - mean) / max(mean, 1e-9))), len(gaps))


def _submission_latencies(run_dir: Path, cal: RunCalibration) -> None:
    """A real run measures its calls' latency from the driver's submission (``summary.json``
    ``call_latency``; ``asyncopd/runtime/call_latency.py``), which the trace's gaps from the
    controller's stamp overstate by the driver's handling after the stamp (the simulator
    charges that as ``driver_event_s`` before it submits): ``dispatch_s`` is then the mean
    over score, train and sync calls, ``rollout_dispatch_s`` over waves. Simulated and older
    runs keep the trace's gaps."""
    try:
        calls = json.loads((run_dir / "summary.json").read_text()).get("call_latency") or {}
    except (OSError, ValueError):
        return
    pooled = [calls[k] for k in ("score", "train", "sync") if calls.get(k, {}).get("n")]
    if pooled and "dispatch" in cal.stages:
        n = sum(c["n"] for c in pooled)
        cal.stages["dispatch"].params["dispatch_s"] = sum(c["mean_s"] * c["n"] for c in pooled) / n
    if calls.get("generate", {}).get("n"):
        cal.stages["rollout dispatch"] = StageFit({"rollout_dispatch_s": calls["generate"]["mean_s"]}, float("nan"),
                                                  calls["generate"]["n"])


def _return_latencies(samples: list[dict[str, Any]]) -> np.ndarray:
    """Per rollout answer (the samples one worker's call returned: same worker and
    ``gen_delivered``), ``gen_delivered`` minus the last ``gen_end`` among them: the return
    path worker → Ray → driver (``sim.costs.return_s``). Requests dropped before they ran
    (no tokens) and traces older than ``gen_delivered`` give none."""
    answers: dict[tuple[str, float], float] = {}
    for r in samples:
        t, end = r.get("gen_delivered"), r.get("gen_end")
        if t is None or end is None or not r.get("response_tokens"):
            continue
        key = (r["worker"], t)
        answers[key] = max(answers.get(key, end), end)
    return np.array([max(0.0, t - end) for (_, t), end in answers.items()])


def _wave_dispatch_gaps(samples: list[dict[str, Any]]) -> np.ndarray:
    """Per rollout wave (the samples one worker started together), its start minus the last
    ``issued_at`` among them, for the waves whose last request came after the worker's
    previous answer reached the driver (an idle worker: the gap is dispatch, not the previous
    wave still running): ``sim.costs.rollout_dispatch_s``."""
    waves: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(dict)
    for r in samples:
        if r.get("gen_start") is not None and r.get("response_tokens"):
            waves[r["worker"]].setdefault(r["gen_start"], []).append(r)
    gaps = []
    for by_start in waves.values():
        previous_answer = None
        for start in sorted(by_start):
            wave = by_start[start]
            issued = max(r["issued_at"] for r in wave)
            if previous_answer is not None and issued >= previous_answer:
                gaps.append(start - issued)
            previous_answer = max((r.get("gen_delivered") or r["gen_end"]) for r in wave)
    return np.array(gaps)


def _driver_costs(run_dir: Path) -> StageFit | None:
    """The driver's main-thread seconds per answer, by kind, as the trainer measured them
    (``summary.json`` ``unplaced_cpu``; ``asyncopd/runtime/cpu_accounting.py``): the wall-clock
    time it was busy (``driver_event_wall_s``; runs older than it: the CPU time,
    ``driver_event_s``, which leaves out the time the unpinned driver was descheduled), what
    the simulator's driver queue charges. None for simulated or older runs."""
    cpu = unplaced_cpu(run_dir)
    measured = cpu.get("driver_event_wall_s") or cpu.get("driver_event_s") or {}
    per = {k: float(v) for k, v in measured.items() if k in DRIVER_EVENT_KINDS}
    if not per:
        return None
    return StageFit({"driver_event_s": per}, float("nan"), int(sum((cpu.get("driver_events") or {}).values())))


def _work(crowd: DeviceCrowd | None, worker: str, t0: float, t1: float, phi: Sharing) -> float:
    return t1 - t0 if crowd is None else crowd.work(worker, t0, t1, phi)


def learner_steps(run_dir: Path, events: list[dict[str, Any]], crowd: DeviceCrowd | None,
                  phi: Sharing) -> LearnerSteps:
    """The run's learner steps with their uncontended work (``calibration.data_parallel``)."""
    return LearnerSteps.of_run(run_dir, _spans(events, "train"), lambda s: _work(
        crowd, s["args"]["worker"], s["ts"] / 1e6, (s["ts"] + s["dur"]) / 1e6, phi))


def _held_costs(run_dir: Path) -> SimCosts:
    """The run's ``sim.costs`` (default ones without a config): the values of what a fit cannot separate."""
    cfg_file = Path(run_dir) / "config.yaml"
    return load_config(cfg_file).sim.costs if cfg_file.is_file() else SimCosts()


def _fit_stage(spans: list[dict[str, Any]], prefix: str, crowd: DeviceCrowd | None, phi: Sharing) -> StageFit | None:
    """``work = {prefix}_fixed_s + {prefix}_per_token_s * tokens`` over the stage's spans."""
    if len(spans) < 2:
        return None
    X = np.array([[1.0, s["args"]["tokens"]] for s in spans])
    y = np.array([_work(crowd, s["args"]["worker"], s["ts"] / 1e6, (s["ts"] + s["dur"]) / 1e6, phi) for s in spans])
    return _linear(X, y, [f"{prefix}_fixed_s", f"{prefix}_per_token_s"], f"{prefix}_cv")


def _fit_colocation(crowd: DeviceCrowd, events: list[dict[str, Any]], samples: list[dict[str, Any]],
                    syncs: list[dict[str, Any]], overlap: _PairOverlap) -> tuple[Sharing, StageFit]:
    """``phi`` per pair of roles the run shows sharing a device (``overlap.shown()``), on
    ``PHI_GRID``: the values whose stage fits leave the smallest squared relative residual
    over every span of a shared worker (the others do not depend on ``phi``), by coordinate
    descent over the pairs. ``colocation_factor`` (the value for pairs the run does not show)
    becomes the overlap-weighted mean of the fitted pairs; 1 when nothing overlapped (e.g.
    sync: the sharing roles never ran at once, so no ``phi`` can be seen).

    A pair whose workers are busy together nearly all the time (two rollout workers on one
    core) is not identifiable this way: any ``phi`` fits once the costs absorb it. ``fit_runs``
    measures such pairs against another run's costs instead."""
    seen = overlap.shown()
    pairs = list(seen)
    if not pairs:
        return Sharing(1.0), StageFit({"colocation_factor": 1.0}, 0.0, 0)
    stages = [(name, prefix) for name, prefix in (("train", "learner"), ("score", "teacher"))
              if any(w.startswith(prefix) for w in crowd.shared)]
    rollout = _rollout_data(samples, syncs) if any(w.startswith("rollout") for w in crowd.shared) else None
    cache: dict[tuple[float, ...], tuple[float, float, int]] = {}

    def score(values: tuple[float, ...]) -> tuple[float, float, int]:
        if values not in cache:
            share = Sharing(1.0, dict(zip(pairs, values)))
            fits = [_fit_stage(_spans(events, name), prefix, crowd, share) for name, prefix in stages]
            if rollout is not None:
                fits.append(_fit_rollout(rollout, crowd, share))
            fits = [f for f in fits if f is not None]
            n = sum(f.n for f in fits)
            cache[values] = (sum(f.sq_rel_err * f.n for f in fits), sum(f.mape * f.n for f in fits) / max(n, 1), n)
        return cache[values]

    values = [1.0] * len(pairs)
    for _sweep in range(1 if len(pairs) == 1 else 3):
        before = list(values)
        for i in range(len(pairs)):
            trial = {float(phi): score(tuple(values[:i] + [float(phi)] + values[i + 1:])) for phi in PHI_GRID}
            values[i] = min((phi for phi in trial if trial[phi][2]), key=lambda phi: (trial[phi][0], abs(phi - 1)),
                            default=values[i])
        if values == before:
            break
    sse, mape, n = score(tuple(values))
    if not n:
        return Sharing(1.0), StageFit({"colocation_factor": 1.0}, float("nan"), 0)
    fitted = dict(zip(pairs, values))
    default = round(sum(v * seen[p] for p, v in fitted.items()) / sum(seen[p] for p in fitted), 2)
    return Sharing(default, fitted), StageFit({"colocation_factor": default, "colocation_pairs": fitted}, mape, n)


@dataclass
class _RolloutData:
    """What the rollout fit needs that does not depend on ``phi``: one row per finished
    sequence ``[P, L_j, sum_k min(L_k, L_j)]``, its interval ``(worker, wave start, end)`` and
    the weight-sync pauses inside it (clipped to it)."""
    rows: np.ndarray
    spans: list[tuple[str, float, float]]
    pauses: list[list[tuple[float, float]]]
    columns: list[str] = field(default_factory=lambda: ["prefill_per_token_s", "decode_step_s", "decode_per_seq_s"])


def _rollout_data(samples: list[dict[str, Any]], syncs: list[dict[str, Any]]) -> _RolloutData:
    waves: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in samples:
        if r["gen_start"] is not None and r["gen_end"] is not None and r["status"] != "aborted" \
                and r["response_tokens"] > 0:
            waves[(r["worker"], round(r["gen_start"], 6))].append(r)
    pauses: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((0, 2)))
    for w in {s["args"]["worker"] for s in syncs}:
        pauses[w] = np.array(sorted(_pause_interval(s) for s in syncs if s["args"]["worker"] == w))
    rows, spans, inside = [], [], []
    for (worker, start), wave in waves.items():
        prompt = sum(r["prompt_tokens"] for r in wave)
        lengths = np.array([r["response_tokens"] for r in wave])
        iv = pauses[worker]
        for r in wave:
            L, end = r["response_tokens"], r["gen_end"]
            hit = iv[(iv[:, 1] > start) & (iv[:, 0] < end)] if len(iv) else iv
            rows.append([prompt, L, int(np.minimum(lengths, L).sum())])
            spans.append((worker, start, end))
            inside.append([(max(a, start), min(b, end)) for a, b in hit.tolist()])
    return _RolloutData(np.array(rows, dtype=float).reshape(-1, 3), spans, inside)


def _continuous_data(samples: list[dict[str, Any]], syncs: list[dict[str, Any]]) -> _RolloutData:
    rows, spans, inside = continuous_rows(samples, syncs)
    return _RolloutData(rows, spans, inside, CONTINUOUS_COLUMNS)


def _is_continuous(d: Path) -> bool:
    """Whether the run's torch rollout batched continuously (its ``config.yaml``)."""
    try:
        cfg = load_config(d / "config.yaml")
    except Exception:  # (no or an old config: the wave fit, as before)
        return False
    return cfg.rollout.backend == "torch" and cfg.rollout.batching == "continuous"


def _fit_rollout(data: _RolloutData, crowd: DeviceCrowd | None = None, phi: Sharing | float = 1.0) -> StageFit | None:
    """The decode model over finished sequences. A sequence's work is its span's uncontended
    work less that of the sync pauses inside it (a pause is not decoding)."""
    if len(data.rows) < len(data.columns):
        return None
    ys = np.array([_work(crowd, w, t0, t1, phi) - sum(_work(crowd, w, a, b, phi) for a, b in inside)
                   for (w, t0, t1), inside in zip(data.spans, data.pauses)])
    return _linear(data.rows, ys, data.columns, "decode_cv")


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


__all__ = ["fit_run", "profile_overrides", "write_profile"]
