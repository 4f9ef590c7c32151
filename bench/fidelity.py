"""Fidelity benchmark: does the simulator predict the real trainer on this machine?

    python bench/fidelity.py [--steps 200] [--calib-steps 300] [--profile PROFILE] [--out DIR]

1. Calibrate once: a real run of the base config (``--calib-steps`` updates, the default
   policy and layout), fitted with ``asyncopd calibrate --from-run`` (or ``--profile``).
2. Predict every combination in ``calibration.fidelity.COMBOS`` with the simulator (3 seeds)
   and write the predictions, before any of them is run.
3. Run each with the real Ray trainer (``--steps`` updates) and compare.

Prints one table: predicted vs measured samples/s, speedup over ``sync`` (measured from the
interleaved pairs of each round), mean staleness, KS, evicted + aborted samples, and the
throughput MAPE; plus two diagnostics per row: the host's speed before its runs relative to calibration
(a fixed torch probe: shared machines drift), and a replay (costs refitted to each measured
run, simulated again: the simulator's structural error). Each combination is measured
``--repeats`` times (default 2), round robin. Targets (issues 5, 15): throughput within 10%,
speedup within 5%, mean staleness within 0.25 versions, KS <= 0.1, evictions within 20%.
Runs on 2 CPU cores in about 25 minutes (repeats 2); nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from calibration.fidelity import (COMBOS, LAYOUT_NOTE, calibrate_by_run, calibration_runs, host_probe,
                                  interval_coverage, mape, model_cv, profile_from_runs, run_fidelity)
from calibration.multi_run import run_scatter
from calibration.profile import profile_costs


def calibrate(config: str, steps: int, out: Path, contention: bool, console: Console, runs: int = 1) -> Path:
    """The calibration runs and their profile; with ``contention``, the sharing factors come
    from ``calibrate --contention``'s probe, one round before each calibration run (at least
    two rounds), so that they average over the same stretch of the host's time as the runs'
    costs, and the run-fitted profile is kept beside it (``calibration-fitted.yaml``) for comparison."""
    from asyncopd.config import load_config
    from asyncopd.runtime.setup import resolve_models
    from calibration.command import probe_sharing
    from calibration.contention_probe import ContentionProbe
    from calibration.from_run import fit_run, write_profile
    from calibration.report import contention_table

    cfg = load_config(config, [f"run.total_steps={steps}"])
    run_dir, profile = out / "calibration-run", out / "calibration.yaml"
    if not contention:
        return calibrate_by_run(cfg, run_dir, profile, repeats=runs)
    with ContentionProbe(cfg, resolve_models(cfg), window_s=3.0) as probe:
        dirs = calibration_runs(cfg, run_dir, runs, before_each=probe.round)
        if probe.rounds < 2:
            probe.round()
        res = probe.result()
    console.print(contention_table(res))
    path = profile_from_runs(dirs, profile, probe_sharing(res))
    write_profile(fit_run(run_dir), out / "calibration-fitted.yaml")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--steps", type=int, default=200, help="learner updates per measured run")
    ap.add_argument("--calib-steps", type=int, default=300, help="updates of the calibration run")
    ap.add_argument("--calib-runs", type=int, default=2, help="calibration runs, fits averaged (the host's "
                    "run-to-run scatter, about 12%% here, shrinks by their square root)")
    ap.add_argument("--profile", type=Path, help="use this calibration profile instead of a calibration run")
    ap.add_argument("--contention", action="store_true", help="sharing factors measured by calibrate --contention "
                    "instead of fitted to the calibration run")
    ap.add_argument("--seeds", type=int, default=3, help="simulations per combination")
    ap.add_argument("--repeats", type=int, default=2, help="measured runs per combination (round robin)")
    ap.add_argument("--no-replay", action="store_true", help="skip the refitted replay simulations")
    ap.add_argument("--only", help="semicolon-separated subset of the combinations")
    ap.add_argument("--out", type=Path, default=Path("runs") / f"fidelity-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()
    combos = COMBOS
    if args.only:
        wanted = [c.strip() for c in args.only.split(";") if c.strip()]
        missing = [c for c in wanted if c not in COMBOS]
        if missing:
            raise SystemExit(f"--only: unknown combination(s) {missing}; known: {list(COMBOS)}")
        combos = {c: COMBOS[c] for c in wanted}
    console = Console(width=150)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    probe = host_probe()
    if args.profile is None:
        console.print(f"calibration run: {args.calib_steps} updates of {args.config} ...")
        args.profile = calibrate(args.config, args.calib_steps, args.out, args.contention, console, args.calib_runs)
        probe = (probe + host_probe()) / 2  # the host's speed around the calibration run
    console.print(f"profile: {args.profile}   host probe: {probe * 1e3:.1f} ms")
    bar = tqdm(total=(1 + args.repeats) * len(combos), desc="fidelity", unit="stage")

    def on_stage(stage: str, name: str) -> None:
        bar.set_postfix_str(f"{stage} {name}")
        bar.update(1)

    rows = run_fidelity(args.config, args.profile, combos, args.out, steps=args.steps,
                        seeds=list(range(args.seeds)), repeats=args.repeats, calibration_probe=probe,
                        with_replay=not args.no_replay,
                        on_stage=on_stage)
    bar.close()
    t = Table(title=f"simulated vs measured, {args.steps} updates each ({LAYOUT_NOTE})", title_justify="left")
    for col in ("combination", "samples/s pred", "meas", "error", "speedup pred", "meas", "error", "staleness pred",
                "meas", "error", "KS", "discarded pred", "meas", "host speed", "replay error", "staleness", "KS"):
        t.add_column(col, justify="left" if col == "combination" else "right")
    for r in rows:
        ok = r.ok
        t.add_row(r.name, f"{r.predicted_samples_per_s:.1f}", f"{r.measured_samples_per_s:.1f}",
                  _mark(f"{r.throughput_error:+.1%}", ok["throughput"]), f"{r.predicted_speedup:.2f}",
                  f"{r.measured_speedup:.2f}", _mark(f"{r.speedup_error:+.1%}", ok["speedup"]),
                  f"{r.predicted_staleness:.2f}",
                  f"{r.measured_staleness:.2f}", _mark(f"{r.staleness_error:+.2f}", ok["staleness"]),
                  _mark(f"{r.ks:.3f}", ok["ks"]), f"{r.predicted_discarded:.0f}",
                  _mark(f"{r.measured_discarded:.0f}", ok["discarded"]), f"{r.host_speed:.2f}", f"{r.replay_error:+.1%}",
                  f"{r.replay_staleness_error:+.2f}", f"{r.replay_ks:.3f}")
    console.print(t)
    m = mape(rows)
    console.print(f"throughput MAPE over {len(rows)} combinations: {_mark(f'{m:.1%}', m <= 0.10)} (target <= 10%)   "
                  f"staleness within 0.25: {sum(r.ok['staleness'] for r in rows)}/{len(rows)}   "
                  f"KS <= 0.1: {sum(r.ok['ks'] for r in rows)}/{len(rows)}   "
                  f"speedup within 5%: {sum(r.ok['speedup'] for r in rows)}/{len(rows)}   "
                  f"discarded within 20%: {sum(r.ok['discarded'] for r in rows)}/{len(rows)}")
    console.print(f"90% prediction intervals cover {interval_coverage(rows):.0%} of the measured runs (target >= 80%)")
    scatter = run_scatter(sorted(args.out.glob("*/real*")))
    if scatter is not None:
        run_cv = scatter.params["run_cv"]
        console.print(f"run-to-run scatter of the measured runs (pooled over repeats of each combination): "
                      f"run_cv {run_cv:.1%} (the profile's: {run_cv_of(args.profile):.1%}); the simulator's own "
                      f"error beyond it: model_cv {model_cv(rows, run_cv, args.calib_runs):.1%} "
                      f"(sim.costs.model_cv, which widens intervals: {profile_costs(args.profile).model_cv:.1%})")
    console.print(f"replay MAPE (costs refitted to each measured run: the simulator's structural error): "
                  f"{mape(rows, 'replay_error'):.1%}")
    console.print(f"results: {args.out}/fidelity.md, fidelity.json, predictions.json; "
                  f"per-combination reports in {args.out}/<i>/compare/report.md   ({time.perf_counter() - t0:.0f} s)")


def run_cv_of(profile: Path) -> float:
    return float(profile_costs(profile).run_cv)


def _mark(text: str, ok: bool) -> str:
    return f"[green]{text}[/green]" if ok else f"[red]{text}[/red]"


if __name__ == "__main__":
    main()
