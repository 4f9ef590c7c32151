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

Two diagnostics separate the simulator's error from the machine's: a *host probe* before each
run (``host_probe``; the row's ``host_speed`` is probe-at-calibration / probe-now, and the
probe-adjusted error scales the prediction by it: still a prediction made before the run), and
a *replay* (costs refitted to the measured run itself, then simulated: the structural error).

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
}
LAYOUT_NOTE = ("default layout: rollout on core 0, teacher and learner sharing core 1; "
               "the last two rows move roles onto the rollout core")


@dataclass
class Prediction:
    name: str
    samples_per_s: float
    staleness_mean: float
    sim_dirs: list[str]
    per_seed: list[float] = field(default_factory=list)


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
    host_speed: float = math.nan  # probe time at calibration / probe time before this run (>1: host faster now)
    probe_adjusted_error: float = math.nan  # error of the prediction scaled by host_speed
    replay_error: float = math.nan  # error of a simulation with costs refitted to this very run

    @property
    def ok(self) -> dict[str, bool]:
        return {"throughput": abs(self.throughput_error) <= 0.10, "staleness": abs(self.staleness_error) <= 0.25,
                "ks": self.ks <= 0.10}


def combo_config(base: str | Path | None, overrides: list[str], *, steps: int,
                 profile: Optional[str | Path] = None, extra: Optional[list[str]] = None) -> OPDConfig:
    """The base config with a combination's overrides, ``steps`` updates and the profile's costs."""
    from calibration.profile import profile_overrides

    costs = profile_overrides(profile) if profile is not None else []
    return load_config(base, [*costs, *overrides, f"run.total_steps={steps}", *(extra or [])])


def predict(name: str, cfg: OPDConfig, out: Path, seeds: list[int]) -> Prediction:
    from asyncopd.compare import load_run
    from sim.driver import simulate

    rates, stale, dirs = [], [], []
    for s in seeds:
        d = out / f"sim-seed{s}"
        summary = simulate(cfg, d, seed=s, progress=False)
        rates.append(float(summary["samples_per_s"]))
        stale.append(load_run(d)["staleness"])
        dirs.append(str(d))
    pooled = np.concatenate(stale) if stale else np.array([])
    return Prediction(name, float(np.mean(rates)), float(pooled.mean()) if len(pooled) else math.nan, dirs, rates)


def pooled_staleness(pred: Prediction) -> np.ndarray:
    from asyncopd.compare import load_run

    return np.concatenate([load_run(d)["staleness"] for d in pred.sim_dirs])


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


def replay_error(name: str, overrides: list[str], real_dir: Path, out: Path, base: str | Path | None, steps: int,
                 seeds: list[int], extra: Optional[list[str]] = None) -> float:
    """Throughput error of a simulation whose costs are refitted to the measured run itself:
    what is left is the simulator's *structural* error (not the drift of stage costs)."""
    from calibration.from_run import fit_run, write_profile

    refit = write_profile(fit_run(real_dir), out / "refit.yaml")
    pred = predict(name, combo_config(base, overrides, steps=steps, profile=refit, extra=extra), out / "replay", seeds)
    from asyncopd.compare import load_run

    thr = float(load_run(real_dir)["summary"]["samples_per_s"])
    return (pred.samples_per_s - thr) / thr


def measure(cfg: OPDConfig, out: Path) -> dict[str, Any]:
    """Run the real trainer (no held-out evaluation: only timing and staleness matter here)."""
    from asyncopd.runtime.driver import train

    return train(cfg, out, progress=False, evaluate=False)


def score(pred: Prediction, real_dir: Path, out: Path, *, plots: bool = True) -> FidelityRow:
    from scipy import stats

    from asyncopd.compare import compare_runs, load_run

    report = compare_runs(real_dir, pred.sim_dirs[0], out, plots=plots)
    measured = load_run(real_dir)
    thr = float(measured["summary"]["samples_per_s"])
    st = float(measured["staleness"].mean())
    ks = float(stats.ks_2samp(pooled_staleness(pred), measured["staleness"]).statistic)
    return FidelityRow(pred.name, pred.samples_per_s, thr, (pred.samples_per_s - thr) / thr, pred.staleness_mean, st,
                       pred.staleness_mean - st, ks, report["out_dir"])


def run_fidelity(base: str | Path | None, profile: str | Path, combos: dict[str, list[str]], out: Path, *,
                 steps: int, seeds: list[int], plots: bool = True, extra: Optional[list[str]] = None,
                 calibration_probe: Optional[float] = None, replay: bool = False,
                 on_stage: Callable[[str, str], None] = lambda stage, name: None) -> list[FidelityRow]:
    """Predict every combination first (``out/predictions.json``), then run and compare each.
    With ``calibration_probe`` (``host_probe()`` at calibration time) each run is preceded by a
    probe and the row says how much faster or slower the host was; ``replay`` adds the error
    of a simulation refitted to the measured run (see ``replay_error``)."""
    out.mkdir(parents=True, exist_ok=True)
    cfgs = {name: combo_config(base, ov, steps=steps, profile=profile, extra=extra) for name, ov in combos.items()}
    preds: dict[str, Prediction] = {}
    for i, (name, cfg) in enumerate(cfgs.items()):
        on_stage("predict", name)
        preds[name] = predict(name, cfg, out / f"{i}", seeds)
    (out / "predictions.json").write_text(json.dumps({n: asdict(p) for n, p in preds.items()}, indent=2))
    rows = []
    for i, (name, cfg) in enumerate(cfgs.items()):
        on_stage("measure", name)
        speed = calibration_probe / host_probe() if calibration_probe else math.nan
        measure(cfg, out / f"{i}" / "real")
        row = score(preds[name], out / f"{i}" / "real", out / f"{i}" / "compare", plots=plots)
        row.host_speed = speed
        if calibration_probe:
            adjusted = row.predicted_samples_per_s * speed
            row.probe_adjusted_error = (adjusted - row.measured_samples_per_s) / row.measured_samples_per_s
        if replay:
            row.replay_error = replay_error(name, combos[name], out / f"{i}" / "real", out / f"{i}", base, steps,
                                            seeds, extra)
        rows.append(row)
    write_results(rows, out)
    return rows


def mape(rows: list[FidelityRow], column: str = "throughput_error") -> float:
    return float(np.mean([abs(getattr(r, column)) for r in rows])) if rows else math.nan


def write_results(rows: list[FidelityRow], out: Path) -> Path:
    """``fidelity.json`` (rows and MAPE) and ``fidelity.md`` (the table) in ``out``."""
    data = {"rows": [asdict(r) | {"ok": r.ok} for r in rows], "throughput_mape": mape(rows)}
    (out / "fidelity.json").write_text(json.dumps(data, indent=2))
    lines = ["| combination | samples/s pred | meas | error | staleness pred | meas | error | KS "
             "| host speed | error, probe-adjusted | error, replay |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.predicted_samples_per_s:.1f} | {r.measured_samples_per_s:.1f} | "
                     f"{r.throughput_error:+.1%} | {r.predicted_staleness:.2f} | {r.measured_staleness:.2f} | "
                     f"{r.staleness_error:+.2f} | {r.ks:.3f} | {r.host_speed:.2f} | {r.probe_adjusted_error:+.1%} | "
                     f"{r.replay_error:+.1%} |")
    lines.append(f"\nThroughput MAPE over {len(rows)} combinations: {mape(rows):.1%} "
                 f"(probe-adjusted: {mape(rows, 'probe_adjusted_error'):.1%}; replay: {mape(rows, 'replay_error'):.1%})")
    path = out / "fidelity.md"
    path.write_text("\n".join(lines) + "\n")
    return path
