"""Fit the simulator's cost model to several recorded runs: the first run's fit
(``calibration.from_run.fit_run``) plus a device-sharing factor for each pair of roles only a
later run puts on one device, found by simulating that run (``fit_runs``;
``asyncopd calibrate --from-run REFERENCE --from-run NEW``), and the run-to-run scatter
``run_cv`` when some of the runs repeat one config (``run_scatter``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from asyncopd.config import load_config
from calibration.contention import PHI_GRID
from asyncopd.config.colocation import Sharing
from calibration.data_parallel import fit_learner
from calibration.from_run import _held_costs, fit_run, learner_steps
from calibration.run_data import RunCalibration, StageFit, _crowd, _PairOverlap, _read_run
from sim.driver import simulate


def fit_runs(run_dirs: list[str | Path], *, progress: bool = False, sharing: Sharing | None = None) -> RunCalibration:
    """The first run's fit, plus a sharing factor for the pairs of roles that later runs put on
    one device and no earlier run did: ``calibrate --from-run REFERENCE --from-run NEW``, e.g.
    with a short run of a layout the planner chose (``asyncopd plan`` names such pairs).

    A later run's new pairs get one ``phi``, the value on ``PHI_GRID`` under which the
    simulator, with the reference run's costs, reproduces that run's measured consumed tokens
    per second (bisection: throughput falls as ``phi`` grows). Matching the whole run, not its
    spans, is deliberate: two rollout workers on one core are busy together all the time, so
    their spans cannot tell ``phi`` from the decode costs, and a teacher's span on a busy core
    includes waiting that is not contention. Costs are not averaged across runs; a host that
    drifts between the runs (see the README's calibration section) shows up in the new ``phi``,
    so run them close together. The learner is the exception: runs with the learner on
    different numbers of devices (DP=1 and DP=2) are fitted together, which measures the
    gradient all-reduce (``calibration/data_parallel.py``).

    ``sharing`` measured directly (``calibrate --contention``) is used as it is: no pair is
    then fitted from any run.

    Runs that repeat the first run's config (``same_config``) are not another layout but
    another draw of the host: their stage fits are averaged into the first's (``average_fits``),
    which shrinks the calibration's share of the host's run-to-run scatter by sqrt(repeats)."""
    base = fit_run(run_dirs[0], sharing)
    repeats = [Path(d) for d in run_dirs[1:] if same_config(Path(run_dirs[0]), Path(d))]
    own = base.stages.get("contention")
    if repeats:  # under the first run's sharing factors, so that the costs average like for like
        held = sharing or (Sharing(own.params["colocation_factor"], own.params.get("colocation_pairs"))
                           if own else None)
        average_fits(base, [fit_run(d, held) for d in repeats])
    pairs = dict(own.params.get("colocation_pairs", {})) if own else {}
    default = own.params["colocation_factor"] if own else 1.0
    for d in (Path(x) for x in run_dirs[1:] if Path(x) not in repeats):
        events, _samples, syncs = _read_run(d)
        crowd = _crowd(d, events, syncs)
        shown = _PairOverlap.of(crowd, events).shown() if crowd is not None and crowd.shared else {}
        new = [] if sharing is not None else [p for p in shown if p not in pairs]
        if new:
            phi = _match_throughput(d, {**base.costs(), "colocation_factor": default}, pairs, new, progress)
            for pair in new:
                pairs[pair], base.pair_sources[pair] = phi, str(d)
    _fit_learner_across(base, [Path(d) for d in run_dirs], Sharing(default, pairs))
    scatter = run_scatter([Path(d) for d in run_dirs])
    if scatter is not None:  # (and how many runs the costs' level was averaged over: sim/intervals.py)
        scatter.params["calibration_runs"] = 1 + len(repeats)
        base.stages["run_cv"] = scatter
    if len(run_dirs) > 1:
        for pair in pairs:
            base.pair_sources.setdefault(pair, base.run_dir)
        base.stages["contention"] = StageFit({"colocation_factor": default, "colocation_pairs": pairs},
                                             own.mape if own else float("nan"), own.n if own else 0)
        base.extra_runs = [str(d) for d in run_dirs[1:] if Path(d) not in repeats]
    return base


def _config_key(run_dir: Path) -> str | None:
    """A run's ``config.yaml`` without ``run.name`` / ``run.output_dir``, as a comparable string."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, ValueError):
        return None
    for key in ("name", "output_dir"):
        (cfg.get("run") or {}).pop(key, None)
    return json.dumps(cfg, sort_keys=True, default=str)


def same_config(a: Path, b: Path) -> bool:
    ka = _config_key(a)
    return ka is not None and ka == _config_key(b)


def average_fits(base: RunCalibration, others: list[RunCalibration]) -> None:
    """Replace every numeric parameter of ``base``'s stages by its mean over ``base`` and the
    ``others`` that fitted the same stage (mappings such as ``colocation_pairs`` keep
    ``base``'s); a stage's MAPE and n become the mean and the sum."""
    for name, fit in base.stages.items():
        fits = [fit] + [o.stages[name] for o in others if name in o.stages]
        if len(fits) < 2:
            continue
        for k, v in fit.params.items():
            if isinstance(v, (int, float)) and all(isinstance(f.params.get(k), (int, float)) for f in fits):
                fit.params[k] = float(np.mean([f.params[k] for f in fits]))
        fit.mape = float(np.nanmean([f.mape for f in fits])) if any(f.mape == f.mape for f in fits) else float("nan")
        fit.n = sum(f.n for f in fits)
    base.notes.append(f"costs averaged over {len(others) + 1} runs of one config (the first and "
                      + ", ".join(o.run_dir for o in others) + ")")


def run_scatter(run_dirs: list[Path]) -> StageFit | None:
    """``sim.costs.run_cv`` from repeated runs: runs whose ``config.yaml`` is the same (apart
    from ``run.name`` and ``run.output_dir``) differ only by the host, so with ``g`` groups of
    ``n_j`` such runs and log samples/s ``y_jk``, the pooled variance

        s^2 = sum_j sum_k (y_jk - mean_j)^2 / sum_j (n_j - 1)

    gives ``run_cv = sqrt(exp(s^2) - 1)`` (the coefficient of variation of a lognormal
    run factor, as ``sim/intervals.py`` uses it) on ``run_cv_dof = sum_j (n_j - 1)`` degrees of
    freedom. None without two runs of one config."""
    import math

    groups: dict[str, list[float]] = {}
    for d in run_dirs:
        key = _config_key(d)
        try:
            rate = float(json.loads((d / "summary.json").read_text())["samples_per_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if key is not None and rate > 0:
            groups.setdefault(key, []).append(math.log(rate))
    ss = sum(sum((y - sum(ys) / len(ys)) ** 2 for y in ys) for ys in groups.values())
    dof = sum(len(ys) - 1 for ys in groups.values())
    if dof < 1:
        return None
    cv = math.sqrt(math.expm1(ss / dof))
    return StageFit({"run_cv": round(cv, 4), "run_cv_dof": dof}, float("nan"),
                    dof + sum(1 for ys in groups.values() if len(ys) > 1))


def _fit_learner_across(base: RunCalibration, run_dirs: list[Path], phi: Sharing) -> None:
    """Runs whose learners have different device counts are fitted together: only together do
    they separate the gradient all-reduce from the learner's fixed cost
    (``calibration/data_parallel.py``); the only costs taken from more than the first run."""
    steps = []
    for d in run_dirs:
        events, _samples, syncs = _read_run(d)
        steps.append(learner_steps(d, events, _crowd(d, events, syncs), phi))
    if len({s.n for s in steps if len(s.tokens)}) < 2:
        return
    fit, notes = fit_learner(steps, _held_costs(run_dirs[0]))
    if fit is not None:
        base.stages["learner"] = fit
        base.notes = [n for n in base.notes if not n.startswith("learner:")] + notes


def _match_throughput(run_dir: Path, costs: dict[str, Any], known: dict[str, float], new: list[str],
                      progress: bool) -> float:
    """The ``phi`` for ``new`` pairs under which ``run_dir``'s config simulates at its measured
    tokens/s (see ``fit_runs``)."""
    measured = json.loads((run_dir / "summary.json").read_text())["tokens_per_s"]
    fixed = [f"sim.costs.{k}={v!r}" for k, v in costs.items() if k != "colocation_pairs"]
    bar = tqdm(desc=f"phi for {', '.join(new)}", unit="sim", disable=not progress, leave=False)

    def predict(phi: float) -> float:
        pairs = {**known, **{p: phi for p in new}}
        cfg = load_config(run_dir / "config.yaml", [*fixed, f"sim.costs.colocation_pairs={pairs!r}",
                                                    "sim.cost_model=parametric"])
        bar.update()
        return simulate(cfg, None, progress=False)["tokens_per_s"]

    lo, hi = 0, len(PHI_GRID) - 1  # predict(PHI_GRID[lo]) >= measured >= predict(PHI_GRID[hi]), else an end
    at = {lo: predict(float(PHI_GRID[lo])), hi: predict(float(PHI_GRID[hi]))}
    if at[lo] <= measured or at[hi] >= measured:
        bar.close()
        return float(PHI_GRID[lo] if at[lo] <= measured else PHI_GRID[hi])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        at[mid] = predict(float(PHI_GRID[mid]))
        lo, hi = (mid, hi) if at[mid] >= measured else (lo, mid)
    bar.close()
    return float(PHI_GRID[min((lo, hi), key=lambda i: abs(at[i] - measured))])


__all__ = ["average_fits", "fit_runs", "run_scatter", "same_config"]
