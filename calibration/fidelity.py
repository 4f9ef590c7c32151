"""Does the simulator predict what the trainer measures? Calibrate once, predict, run, compare.

For each layout/policy *combination* (a list of config overrides on one base config):

1. **predict** — simulate it with the calibrated costs under ``seeds`` (the seeds drive the
   prompts and the cost noise); the prediction is the mean samples/s over seeds and the
   pooled per-sample staleness (token-weighted mean, as ``asyncopd compare`` uses);
2. **measure** — run the real Ray trainer on the same config (after *every* prediction has
   been written to ``predictions.json``, so no measurement can leak into a prediction);
3. **compare** — ``asyncopd compare`` of the measured run against the first simulated seed
   (report, plots), plus the errors against the pooled prediction:

       throughput error  e_i = (pred_i - meas_i) / meas_i,     MAPE = mean_i |e_i|
       staleness error   pred mean - measured mean (versions)
       KS                sup_x |F_pred(x) - F_meas(x)| over per-sample staleness
       discarded         samples evicted or aborted per run (mean over seeds / runs), and
                         (pred - meas) / meas when the run discarded any
       interval          the 90% prediction interval of a run's samples/s from the seeds and
                         ``sim.costs.run_cv`` and ``calibration_runs`` (``sim/intervals.py``); coverage = share of the
                         measured runs inside their combination's interval
       speedup           over the ``sync`` combination: predicted  pred_c / pred_sync; measured
                         mean_r (meas_c,r / meas_sync,r) over the rounds r, each of which runs
                         every combination once (round robin: interleaved A B A B pairs, so
                         the host's drift mostly cancels); error = predicted / measured - 1

Two diagnostics separate the simulator's error from the machine's: a *host probe* before each
run (``host_probe``; the row's ``host_speed`` is probe-at-calibration / probe-before-the-run),
and a *replay* (costs refitted to each measured run itself, then simulated: the structural
error). Runs repeat round robin (``repeats``) so the host's slow spells hit every combination.

``COMBOS`` is the set the fidelity benchmark runs on 2 CPU cores (``bench/fidelity.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from asyncopd.config import OPDConfig, load_config
from asyncopd.config.schema import SimCosts
from asyncopd.config.colocation import Sharing
from asyncopd.runtime.driver import train
from asyncopd.trace.compare import compare_runs, load_run
from calibration.from_run import fit_run, write_profile
from calibration.multi_run import fit_runs
from calibration.profile import profile_overrides
from sim.driver import simulate
from sim.intervals import costs_interval

SHARED_ONE_CORE = ["layout.teacher.devices=[0]", "layout.learner.devices=[0]"]
COMBOS: dict[str, list[str]] = {
    "sync": ["pipeline.policy=sync"],
    "step_off(1)": ["pipeline.policy=step_off(1)"],
    "step_off(2)": ["pipeline.policy=step_off(2)"],
    "fully_async(eta=1)": ["pipeline.policy=fully_async(eta=1)"],
    "fully_async(eta=2)": ["pipeline.policy=fully_async(eta=2)"],
    "fully_async(eta=4)": ["pipeline.policy=fully_async(eta=4)"],
    "fully_async(eta=4), cap 1": ["pipeline.policy=fully_async(eta=4,max_staleness=1)"],
    "fully_async(eta=2), teacher on the rollout core": ["pipeline.policy=fully_async(eta=2)",
                                                        "layout.teacher.devices=[0]"],
    "fully_async(eta=2), all roles on one core": ["pipeline.policy=fully_async(eta=2)", *SHARED_ONE_CORE],
    "fully_async(eta=2), learner on both cores (DP=2)": ["pipeline.policy=fully_async(eta=2)",
                                                         "layout.learner.devices=[0,1]"],
    "fully_async(eta=2), two rollout workers on core 0": ["pipeline.policy=fully_async(eta=2)",
                                                          "layout.rollout.workers=2"],
}
LAYOUT_NOTE = ("default layout: rollout on core 0, teacher and learner sharing core 1; "
               "the last four rows are layouts a default-layout calibration has not seen")
BASELINE = "sync"


@dataclass
class Prediction:
    name: str
    samples_per_s: float
    staleness_mean: float
    sim_dirs: list[str]
    per_seed: list[float] = field(default_factory=list)
    discarded: float = 0.0  # samples evicted or aborted per run, mean over seeds


@dataclass
class FidelityRow:
    name: str
    predicted_samples_per_s: float
    measured_samples_per_s: float
    throughput_error: float
    predicted_staleness: float
    measured_staleness: float
    staleness_error: float
    ks: float
    compare_dir: str
    host_speed: float = math.nan  # probe time at calibration / probe time before the run (>1: host faster then)
    replay_error: float = math.nan  # throughput error of simulations refitted to the measured runs themselves
    replay_staleness_error: float = math.nan
    replay_ks: float = math.nan
    predicted_discarded: float = 0.0  # evicted + aborted samples per run
    measured_discarded: float = 0.0
    predicted_speedup: float = math.nan  # over the sync combination (module docstring)
    measured_speedup: float = math.nan
    interval_low: float = math.nan  # 90% prediction interval of a run's samples/s
    interval_high: float = math.nan
    runs_inside: int = 0  # measured runs inside it
    runs: int = 0

    @property
    def discarded_error(self) -> float:
        return (self.predicted_discarded - self.measured_discarded) / self.measured_discarded \
            if self.measured_discarded else math.nan

    @property
    def speedup_error(self) -> float:
        return self.predicted_speedup / self.measured_speedup - 1

    @property
    def ok(self) -> dict[str, bool]:
        return {"throughput": abs(self.throughput_error) <= 0.10, "staleness": abs(self.staleness_error) <= 0.25,
                "ks": self.ks <= 0.10, "discarded": not abs(self.discarded_error) > 0.20,
                "speedup": not abs(self.speedup_error) > 0.05}


def combo_config(base: str | Path | None, overrides: list[str], *, steps: int,
                 profile: Optional[str | Path] = None, extra: Optional[list[str]] = None) -> OPDConfig:
    """The base config with a combination's overrides, ``steps`` updates and the profile's costs."""
    costs = profile_overrides(profile) if profile is not None else []
    return load_config(base, [*costs, *overrides, f"run.total_steps={steps}", *(extra or [])])


def predict(name: str, cfg: OPDConfig, out: Path, seeds: list[int]) -> Prediction:
    rates, dirs, discarded = [], [], []
    for s in seeds:
        d = out / f"sim-seed{s}"
        summary = simulate(cfg, d, seed=s, progress=False)
        rates.append(float(summary["samples_per_s"]))
        discarded.append(discarded_samples(summary))
        dirs.append(str(d))
    pooled = _pooled(dirs)
    return Prediction(name, float(np.mean(rates)), float(pooled.mean()) if len(pooled) else math.nan, dirs, rates,
                      float(np.mean(discarded)))


def discarded_samples(summary: dict[str, Any]) -> float:
    """Samples a run evicted or aborted (``summary.json``'s ``sample_status``)."""
    status = summary.get("sample_status") or {}
    return float(status.get("evicted", 0) + status.get("aborted", 0))


def pooled_staleness(pred: Prediction) -> np.ndarray:
    """Per-sample staleness of every simulated seed of ``pred``, together."""
    return _pooled(pred.sim_dirs)


def _pooled(run_dirs: list[str]) -> np.ndarray:
    return np.concatenate([load_run(d)["staleness"] for d in run_dirs]) if run_dirs else np.array([])


def host_probe(repeats: int = 5) -> float:
    """Seconds for a fixed, small single-threaded torch workload (best of ``repeats``): the
    host's current speed at the kind of work the built-in models do (many small kernels plus
    Python overhead). Shared machines drift; comparing the probe before a run with the probe at
    calibration separates that drift from modelling error."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(64, 128, generator=g), torch.randn(128, 128, generator=g)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(400):
                torch.softmax(torch.tanh(x @ w) @ w.T, dim=-1)
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        torch.set_num_threads(threads)


def replay(name: str, overrides: list[str], real_dirs: list[Path], out: Path, base: str | Path | None,
           steps: int, seeds: list[int], extra: Optional[list[str]] = None) -> tuple[float, float, float]:
    """Simulations whose costs are refitted to each measured run itself: (throughput error, mean
    over the runs; mean staleness error; KS of the pooled staleness). What is left is the
    simulator's *structural* error, not the drift of stage costs between calibration and run."""
    from scipy import stats

    errors, sim_stale, real_stale = [], [], []
    for k, real in enumerate(real_dirs):
        refit = write_profile(fit_run(real), out / f"refit{k}.yaml")
        cfg = combo_config(base, overrides, steps=steps, profile=refit, extra=extra)
        pred = predict(name, cfg, out / f"replay{k}", seeds)
        measured = load_run(real)
        thr = float(measured["summary"]["samples_per_s"])
        errors.append((pred.samples_per_s - thr) / thr)
        sim_stale.append(pooled_staleness(pred))
        real_stale.append(measured["staleness"])
    a, b = np.concatenate(sim_stale), np.concatenate(real_stale)
    return float(np.mean(errors)), float(a.mean() - b.mean()), float(stats.ks_2samp(a, b).statistic)


class CalibrationRunFailed(RuntimeError):
    """A run ``calibrate_by_run`` trained did not end ok; ``summary`` says why."""

    def __init__(self, run_dir: Path, summary: dict[str, Any]) -> None:
        super().__init__(f"calibration run {run_dir} failed: {summary.get('reason')}")
        self.summary = summary


def calibrate_by_run(cfg: OPDConfig, run_dir: Path, profile: Path, *, progress: bool = False,
                     sharing: Optional[Sharing] = None, repeats: int = 1) -> Path:
    """Train ``cfg`` into ``run_dir`` (no held-out evaluation) and write the profile that
    ``asyncopd calibrate --from-run`` fits to it (the demo, this benchmark and the GPU check);
    with ``sharing`` measured by ``calibrate --contention``, as ``--from-run --contention`` does.
    ``repeats > 1`` trains the config again into ``run_dir-2``, ... and averages the fits
    (``calibration.multi_run.fit_runs``), which also measures ``run_cv``."""
    return profile_from_runs(calibration_runs(cfg, run_dir, repeats, progress=progress), profile, sharing)


def calibration_runs(cfg: OPDConfig, run_dir: Path, repeats: int = 1, *, progress: bool = False,
                     before_each: Optional[Callable[[], None]] = None) -> list[Path]:
    """Train ``cfg`` into ``run_dir``, ``run_dir-2``, ... (``repeats`` runs), calling
    ``before_each()`` before each (e.g. a contention probe's round, spread between them)."""
    dirs = [run_dir] + [run_dir.with_name(f"{run_dir.name}-{k}") for k in range(2, repeats + 1)]
    for d in dirs:
        if before_each is not None:
            before_each()
        summary = train(cfg, d, progress=progress, evaluate=False)
        if not summary.get("ok"):  # (a fit to a run that failed would be a fit to its failure)
            raise CalibrationRunFailed(d, summary)
    return dirs


def profile_from_runs(dirs: list[Path], profile: Path, sharing: Optional[Sharing] = None) -> Path:
    """The profile ``calibrate --from-run`` fits to ``dirs`` (repeats of one config averaged)."""
    if len(dirs) == 1:
        return write_profile(fit_run(dirs[0], sharing), profile)
    return write_profile(fit_runs(dirs, sharing=sharing), profile)


def measure(cfg: OPDConfig, out: Path) -> dict[str, Any]:
    """Run the real trainer (no held-out evaluation: only timing and staleness matter here)."""
    return train(cfg, out, progress=False, evaluate=False)


def score(pred: Prediction, real_dirs: list[Path], out: Path, *, plots: bool = True,
          costs: SimCosts | None = None) -> FidelityRow:
    """Errors of ``pred`` against the measured runs (mean samples/s, pooled staleness); the
    ``asyncopd compare`` report is of the first measured run against the first simulated seed."""
    from scipy import stats

    report = compare_runs(real_dirs[0], pred.sim_dirs[0], out, plots=plots)
    measured = [load_run(d) for d in real_dirs]
    thr = float(np.mean([m["summary"]["samples_per_s"] for m in measured]))
    stale = np.concatenate([m["staleness"] for m in measured])
    ks = float(stats.ks_2samp(pooled_staleness(pred), stale).statistic)
    iv = costs_interval(pred.per_seed, costs or SimCosts(), 0.9)
    rates = [float(m["summary"]["samples_per_s"]) for m in measured]
    return FidelityRow(pred.name, pred.samples_per_s, thr, (pred.samples_per_s - thr) / thr, pred.staleness_mean,
                       float(stale.mean()), pred.staleness_mean - float(stale.mean()), ks, report["out_dir"],
                       predicted_discarded=pred.discarded,
                       measured_discarded=float(np.mean([discarded_samples(m["summary"]) for m in measured])),
                       interval_low=iv.low, interval_high=iv.high, runs_inside=sum(iv.contains(r) for r in rates),
                       runs=len(rates))


def add_speedups(rows: list[FidelityRow], measured_rates: dict[str, list[float]], baseline: str = BASELINE) -> None:
    """Predicted and measured speedup of every row over ``baseline`` (module docstring); measured
    from the rounds' pairs. Nothing to do without the baseline among the rows."""
    base = next((r for r in rows if r.name == baseline), None)
    if base is None:
        return
    for r in rows:
        r.predicted_speedup = r.predicted_samples_per_s / base.predicted_samples_per_s
        pairs = list(zip(measured_rates[r.name], measured_rates[baseline]))
        r.measured_speedup = float(np.mean([a / b for a, b in pairs])) if pairs else math.nan


def run_fidelity(base: str | Path | None, profile: str | Path, combos: dict[str, list[str]], out: Path, *,
                 steps: int, seeds: list[int], repeats: int = 1, plots: bool = True,
                 extra: Optional[list[str]] = None, calibration_probe: Optional[float] = None, with_replay: bool = False,
                 on_stage: Callable[[str, str], None] = lambda stage, name: None) -> list[FidelityRow]:
    """Predict every combination first (``out/predictions.json``), then run each ``repeats``
    times (round robin, so a slow spell of the host hits every combination alike) and compare.
    With ``calibration_probe`` (``host_probe()`` at calibration time) every run is preceded by a
    probe and the row reports the host's speed relative to calibration (mean over its runs);
    ``with_replay`` adds the errors of simulations refitted to the measured runs (``replay``)."""
    out.mkdir(parents=True, exist_ok=True)
    cfgs = {name: combo_config(base, ov, steps=steps, profile=profile, extra=extra) for name, ov in combos.items()}
    preds: dict[str, Prediction] = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        on_stage("predict", name)
        preds[name] = predict(name, cfg, out / f"{i}", seeds)
    (out / "predictions.json").write_text(json.dumps({n: asdict(p) for n, p in preds.items()}, indent=2))
    speeds: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(repeats):
        for i, (name, cfg) in enumerate(cfgs.items()):
            on_stage("measure", name)
            if calibration_probe:
                speeds[name].append(calibration_probe / host_probe())
            measure(cfg, _real_dir(out, i, r))
    rows = []
    rates = {name: [float(load_run(_real_dir(out, i, r))["summary"]["samples_per_s"]) for r in range(repeats)]
             for i, name in enumerate(cfgs)}
    for i, name in enumerate(cfgs):
        reals = [_real_dir(out, i, r) for r in range(repeats)]
        row = score(preds[name], reals, out / f"{i}" / "compare", plots=plots, costs=cfgs[name].sim.costs)
        row.host_speed = float(np.mean(speeds[name])) if speeds[name] else math.nan
        if with_replay:
            row.replay_error, row.replay_staleness_error, row.replay_ks = replay(name, combos[name], reals, out / f"{i}",
                                                                                base, steps, seeds, extra)
        rows.append(row)
    add_speedups(rows, rates)
    write_results(rows, out)
    return rows


def _real_dir(out: Path, combo: int, repeat: int) -> Path:
    return out / f"{combo}" / ("real" if repeat == 0 else f"real{repeat}")


def interval_coverage(rows: list[FidelityRow]) -> float:
    """Share of all measured runs inside their combination's 90% prediction interval."""
    runs = sum(r.runs for r in rows)
    return sum(r.runs_inside for r in rows) / runs if runs else math.nan


def model_cv(rows: list[FidelityRow], run_cv: float, calibration_runs: int) -> float:
    """The simulator's own error (``sim.costs.model_cv``) these rows measure: with ``e_c`` the
    log error of combination ``c``'s prediction against the mean of its ``r_c`` measured runs,

        tau^2 = mean_c e_c^2  -  sigma^2 mean_c (1 / r_c)  -  sigma^2 / k,    sigma^2 = log(1 + run_cv^2)

    (what is left once the measured means' and the calibration's own run scatter is taken
    out; ``k`` calibration runs), ``model_cv = sqrt(exp(tau^2) - 1)``, 0 when nothing is left."""
    if not rows:
        return math.nan
    sigma2 = math.log1p(run_cv ** 2)
    e2 = float(np.mean([math.log(r.predicted_samples_per_s / r.measured_samples_per_s) ** 2 for r in rows]))
    tau2 = e2 - sigma2 * float(np.mean([1 / max(1, r.runs) for r in rows])) - sigma2 / max(1, calibration_runs)
    return math.sqrt(math.expm1(max(0.0, tau2)))


def mape(rows: list[FidelityRow], column: str = "throughput_error") -> float:
    return float(np.mean([abs(getattr(r, column)) for r in rows])) if rows else math.nan


def write_results(rows: list[FidelityRow], out: Path) -> Path:
    """``fidelity.json`` (rows and MAPE) and ``fidelity.md`` (the table) in ``out``."""
    data = {"rows": [asdict(r) | {"ok": r.ok, "speedup_error": r.speedup_error, "discarded_error": r.discarded_error}
                     for r in rows], "throughput_mape": mape(rows), "interval_coverage": interval_coverage(rows)}
    (out / "fidelity.json").write_text(json.dumps(data, indent=2))
    lines = ["| combination | samples/s pred | meas | error | speedup pred | meas | error | staleness pred | meas "
             "| error | KS | discarded pred | meas | host speed | replay: samples/s error | staleness error | KS |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.predicted_samples_per_s:.1f} | {r.measured_samples_per_s:.1f} | "
                     f"{r.throughput_error:+.1%} | {r.predicted_speedup:.2f} | {r.measured_speedup:.2f} | "
                     f"{r.speedup_error:+.1%} | {r.predicted_staleness:.2f} | {r.measured_staleness:.2f} | "
                     f"{r.staleness_error:+.2f} | {r.ks:.3f} | {r.predicted_discarded:.0f} | {r.measured_discarded:.0f} | "
                     f"{r.host_speed:.2f} | {r.replay_error:+.1%} | {r.replay_staleness_error:+.2f} | {r.replay_ks:.3f} |")
    lines.append(f"\n90% prediction intervals cover {interval_coverage(rows):.0%} of the measured runs "
                 f"({', '.join(f'{r.name}: [{r.interval_low:.1f}, {r.interval_high:.1f}]' for r in rows)})")
    lines.append(f"\nThroughput MAPE over {len(rows)} combinations: {mape(rows):.1%} "
                 f"(replay, costs refitted to each measured run: {mape(rows, 'replay_error'):.1%})")
    path = out / "fidelity.md"
    path.write_text("\n".join(lines) + "\n")
    return path
