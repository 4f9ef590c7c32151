"""``asyncopd demo``: calibrate → simulate → train → compare on one config, on this machine.

The simulator is calibrated by short real runs first (``calibrate --from-run`` of each,
averaged), predicts the full run before it runs, and the demo prints the error it measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from asyncopd.config import OPDConfig
from asyncopd.trace.schema import validate_run_dir
from asyncopd.trace.tables import print_compare, summary_table


def run_demo(cfg: OPDConfig, with_costs: Callable[[Path], OPDConfig], console: Console, *, calibration_steps: int,
             calibration_runs: int, progress: bool) -> dict[str, Any]:
    """Run the demo on ``cfg``; ``with_costs(profile)`` reloads the config with a calibration
    profile's costs. Returns the real run's summary."""
    from asyncopd.runtime.driver import train as run_train  # (lazy: ray, torch)
    from asyncopd.runtime.setup import start_ray  # (lazy: ray)
    from asyncopd.trace.compare import compare_runs  # (lazy: numpy)
    from calibration.fidelity import CalibrationRunFailed, calibrate_by_run  # (lazy: scipy, simpy)
    from sim.driver import simulate as run_sim  # (lazy: simpy)

    t0 = time.perf_counter()
    root = Path(cfg.run.output_dir) / f"{cfg.run.name}-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    started_ray = start_ray(cfg)  # (one Ray for every real run)
    try:
        if calibration_steps > 0:
            console.rule(f"1/4 calibrate: {calibration_runs} x {calibration_steps}-update real runs, then "
                         f"calibrate --from-run")
            short = cfg.model_copy(update={"run": cfg.run.model_copy(update={"total_steps": calibration_steps})})
            try:
                profile = calibrate_by_run(short, root / "calibration", root / "calibration.yaml", progress=progress,
                                           repeats=calibration_runs)
            except CalibrationRunFailed as e:
                return {**e.summary, "reason": str(e)}
            cfg = with_costs(profile)
            console.print(f"profile: {profile}")
        console.rule(f"2/4 predict: simulate the full run ({cfg.policy().describe()})")
        sim_summary = run_sim(cfg, root / "sim", progress=progress)
        console.print(summary_table("simulated", sim_summary))
        console.rule("3/4 train (real Ray trainer)")
        real_summary = run_train(cfg, root / "train", progress=progress)
        console.print(summary_table("measured", real_summary))
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if not real_summary.get("ok"):
        return real_summary
    for d in (root / "sim", root / "train"):
        validate_run_dir(d)
    console.rule("4/4 compare")
    print_compare(console, compare_runs(root / "train", root / "sim", root / "compare"))
    error = sim_summary["samples_per_s"] / real_summary["samples_per_s"] - 1
    console.print(f"[bold]prediction error[/bold]: the simulator predicted {sim_summary['samples_per_s']:.1f} samples/s "
                  f"before the run, the trainer measured {real_summary['samples_per_s']:.1f} ({error:+.1%}; "
                  + ("calibrated on this machine by the first step)" if calibration_steps > 0 else
                     "with the config's costs)"))
    console.rule("where things are")
    console.print(f"simulated run : {root / 'sim'}\nmeasured run  : {root / 'train'}\n"
                  f"comparison    : {root / 'compare'}\nfinal student : {root / 'train' / 'checkpoints' / 'final'}\n"
                  f"open trace.json of either run in https://ui.perfetto.dev or chrome://tracing\n"
                  f"demo wall time: {time.perf_counter() - t0:.0f} s")
    (root / "prediction_error.json").write_text(json.dumps({
        "predicted_samples_per_s": sim_summary["samples_per_s"], "measured_samples_per_s": real_summary["samples_per_s"],
        "error": error, "calibration_steps": calibration_steps, "calibration_runs": calibration_runs}, indent=2))
    return real_summary
