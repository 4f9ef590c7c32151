"""``asyncopd plan CONFIG``: choose the layout and the policy for a cluster before the run.

Registered in ``asyncopd/cli.py`` as ``app.command("plan")(plan)``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from asyncopd.catalog.hardware import HARDWARE

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def plan(config: Path = typer.Argument(..., help="config with the models and the workload (its layout is ignored)"),
         devices: Optional[int] = typer.Option(None, "--devices", "-n", help="devices to plan for (default: "
                                               "cluster.num_devices)"),
         hardware: Optional[str] = typer.Option(None, "--hardware", help=f"device kind ({', '.join(HARDWARE)}); "
                                                "uses the analytic cost model"),
         costs: Optional[Path] = typer.Option(None, "--costs", help="calibration profile (from `asyncopd calibrate`) "
                                              "for the parametric cost model"),
         max_mean_staleness: Optional[float] = typer.Option(None, "--max-mean-staleness",
                                                            help="reject plans whose mean staleness exceeds this"),
         max_staleness: Optional[int] = typer.Option(None, "--max-staleness", help="hard per-sample cap: only "
                                                     "policies bounded by it (sync, step_off(n<=N), capped fully_async)"),
         memory_headroom: float = typer.Option(0.1, "--memory-headroom", help="share of device memory kept free"),
         out: Optional[Path] = typer.Option(None, "--out", help="output directory (default: "
                                            "run.output_dir/NAME-plan-TIME)"),
         budget_layouts: int = typer.Option(512, "--budget-layouts", help="most layout x policy candidates "
                                            "simulated; larger spaces are pruned by the throughput bound"),
         steps: int = typer.Option(12, "--steps", help="learner steps simulated for the finalists"),
         screen_steps: int = typer.Option(1, "--screen-steps", help="learner steps of the first screening round"),
         finalists: int = typer.Option(8, "--finalists", help="candidates simulated at full length"),
         policy: Optional[list[str]] = typer.Option(None, "--policy", "-p", help="a policy to try (repeatable; "
                                                    "default: a grid of sync, step_off and fully_async)"),
         tolerance: float = typer.Option(0.01, "--tolerance", help="choose the least stale plan within this "
                                         "share of the best throughput"),
         jobs: int = typer.Option(2, "--jobs", "-j", help="simulations in parallel (processes)"),
         seed: Optional[int] = typer.Option(None, help="simulation seed (default: run.seed)"),
         interval_seeds: int = typer.Option(3, "--interval-seeds", help="seeds simulated for the prediction "
                                            "intervals of the 3 best and the best sync candidate (1: run-to-run "
                                            "scatter only)"),
         level: float = typer.Option(0.9, "--level", help="prediction interval level"),
         top: int = typer.Option(10, "--top", help="rows of the ranked table printed"),
         set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="override a config field: "
                                                  "--set learner.batch_size=512"),
         verify: int = typer.Option(0, "--verify", help="run the K best distinct layouts with the real trainer on "
                                    "this machine and choose the best measured (0: choose by simulation only)"),
         verify_steps: int = typer.Option(100, "--verify-steps", help="learner updates per --verify run"),
         verify_repeats: int = typer.Option(2, "--verify-repeats", help="runs per contender (round robin)"),
         plots: bool = typer.Option(True, help="write the Pareto plot (pareto.png)"),
         progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Plan a cluster: enumerate layouts and policies, reject what does not fit in memory,
    simulate the rest in parallel, rank them; write plan.csv, pareto.png and plan.yaml."""
    # (lazy imports in this module: `asyncopd --help` registers this command without loading the planner)
    from asyncopd.config.loader import ConfigError
    from asyncopd.planner.core import PlanOptions, plan_cluster, planner_config
    from asyncopd.planner.report import render_table, rows
    from asyncopd.planner.write import save_plan
    from sim.intervals import scatter_note

    if not config.is_file():
        _fail(f"config file not found: {config}")
    try:
        cfg = planner_config(config, set_ or [], devices=devices, hardware=hardware, costs=costs)
        opts = PlanOptions(max_mean_staleness=max_mean_staleness, max_staleness=max_staleness,
                           memory_headroom=memory_headroom, budget_layouts=budget_layouts, steps=steps,
                           screen_steps=screen_steps, finalists=finalists, policies=policy or None, jobs=jobs,
                           seed=seed, tolerance=tolerance, interval_seeds=interval_seeds, level=level)
        opts.check()
        if verify < 0 or verify_steps < 1 or verify_repeats < 1:
            raise ValueError(f"--verify must be >= 0 and --verify-steps, --verify-repeats >= 1 "
                             f"(got {verify}, {verify_steps}, {verify_repeats})")
    except (ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    out_dir = out or Path(cfg.run.output_dir) / f"{cfg.run.name}-plan-{time.strftime('%Y%m%d-%H%M%S')}"
    res = plan_cluster(cfg, opts, progress=progress)
    n = res.counts
    console.print(f"{cfg.cluster.num_devices} x {cfg.cluster.hardware} ({cfg.sim.cost_model} costs): "
                  f"{n['layouts']} layouts, {n['rejected_memory']} out of memory"
                  + (f", {n['skipped_node_crossing']} crossing nodes" if n["skipped_node_crossing"] else "")
                  + f"; {n['candidates']} candidates ({n['feasible_layouts']} layouts x {n['policies']} policies)"
                  + (f", {n['pruned_by_bound']} pruned by bound" if n["pruned_by_bound"] else ""))
    if res.rounds:
        console.print(f"simulated {n['simulated']} candidates ({res.mode}: "
                      + " -> ".join(f"{c} x {s} steps" for s, c, _ in res.rounds)
                      + f"), {n.get('simulations', 0)} simulations in {res.wall_s:.1f} s")
    paths = save_plan(res, out_dir, plots=plots)
    if not res.candidates:
        closest = min(res.rejected, key=lambda lr: len(lr[1]))[1] if res.rejected else "no layouts"
        _fail(f"no layout of {cfg.cluster.num_devices} devices fits in memory (e.g. {closest}); "
              f"see {paths['rejected']}", 1)
    table = rows(res)
    console.print(render_table(res, table, top))
    best, base = res.best, res.best_sync
    if best is None:
        _fail(f"no candidate meets the constraints (see the status column of {paths['csv']})", 1)
    r = best.result or {}
    sp = res.speedup(best)
    console.print(f"chosen: {best.layout.describe()}  {best.policy}: {r['tokens_per_s']:,.0f} tokens/s "
                  f"({r['samples_per_s']:.4g} samples/s)"
                  + (f", {sp:.2f}x the best sync layout ({base.layout.describe()})" if sp and base else "")
                  + f", staleness mean {r['staleness_mean']:.2f} / p95 {r['staleness_p95']}")
    if best.interval is not None:
        console.print(f"a real run's samples/s: {best.interval.describe('.4g')}, "
                      f"with {scatter_note(cfg.sim.costs)}")
    if verify:
        paths = _verify(res, out_dir, verify, verify_steps, verify_repeats, progress, plots, costs)
    console.print(f"config: {paths['config']}  (asyncopd train {paths['config']})")
    unmeasured = res.unmeasured_pairs() if cfg.sim.costs.colocation_pairs else []  # else nothing is calibrated
    if unmeasured and not verify:
        console.print(f"[yellow]note:[/yellow] the chosen layout shares devices between {', '.join(unmeasured)}, "
                      f"which the cost model has not measured (assumed colocation_factor "
                      f"{cfg.sim.costs.colocation_factor:g}). To check: asyncopd train {paths['config']} "
                      f"--set run.total_steps=200 --out RUN; asyncopd calibrate --from-run REFERENCE_RUN "
                      f"--from-run RUN; plan again with --costs REFERENCE_RUN/calibration.yaml")
    console.print(f"table: {paths['csv']}  rejected: {paths['rejected']}" +
                  (f"  Pareto plot: {paths['pareto']}" if "pareto" in paths else ""))


def _verify(res, out_dir: Path, k: int, steps: int, repeats: int, progress: bool, plots: bool,
            costs: Optional[Path]) -> dict[str, Path]:
    """``--verify``: the bake-off (``asyncopd/planner/verify.py``), its table, the plan rewritten,
    and the calibration (``--costs``) refined with the sharing factors its runs show."""
    from rich.table import Table

    from asyncopd.planner.verify import refine_calibration, verify_plan  # (lazy, as above)
    from asyncopd.planner.write import save_plan

    try:
        trials = verify_plan(res, out_dir, k=k, steps=steps, repeats=repeats, progress=progress)
    except ValueError as e:
        _fail(str(e))
    t = Table(title=f"verified on this machine: {steps} updates x {repeats} runs each, round robin",
              title_justify="left")
    for col in ("layout", "policy", "predicted tokens/s", "measured tokens/s (runs)", "measured / predicted"):
        t.add_column(col)
    for tr in trials:
        runs = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in tr.runs)
        t.add_row(tr.layout, tr.policy, f"{tr.predicted_tokens_per_s:,.0f}", f"{tr.tokens_per_s:,.0f} ({runs})",
                  f"{tr.tokens_per_s / tr.predicted_tokens_per_s:.2f}" if tr.predicted_tokens_per_s else "-")
    console.print(t)
    best = trials[0]
    console.print(f"chosen after verification: {best.layout}  {best.policy}: {best.tokens_per_s:,.0f} tokens/s "
                  f"({best.samples_per_s:.4g} samples/s) measured")
    if costs is not None:
        _path, message = refine_calibration(costs, trials, out_dir, progress)
        console.print(message)
    return save_plan(res, out_dir, plots=plots)
