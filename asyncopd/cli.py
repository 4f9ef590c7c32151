"""``asyncopd`` command line: simulate, train, eval, compare, validate, bound, demo.

Heavy imports (torch, ray, simpy, seaborn) happen inside the commands that need them, so
``asyncopd --help`` and config checks stay instant.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from asyncopd.cli_errors import exit_unless_ok, guarded
from asyncopd.config import ConfigError, OPDConfig, dump_config, load_config
from asyncopd.control.policies import parse_policy
from asyncopd.runtime.checkpoints import evaluate_checkpoint, find_resume_checkpoint
from asyncopd.trace.tables import efficiency_cell, predict_table, print_compare, summary_table
from asyncopd.trace.schema import RunFormatError, validate_run_dir
from calibration.profile import profile_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Plan, simulate and run asynchronous on-policy distillation.")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def command(*args: Any, **kwargs: Any) -> Any:
    """``app.command`` whose bad input ends in one line and exit status 2 (``cli_errors.py``)."""
    return lambda f: app.command(*args, **kwargs)(guarded(err)(f))


SetOpt = typer.Option(None, "--set", "-s", help="override a config field: --set pipeline.policy='step_off(2)'")
PlotsOpt = typer.Option(True, help="write staleness / utilisation / queue plots into the run directory")


def _plots(run_dir: Path, enabled: bool) -> None:
    if enabled:
        from asyncopd.trace.plots import plot_run  # (lazy: keeps numpy out of `asyncopd --help`)

        for name, path in plot_run(run_dir).items():
            console.print(f"plot {name}: {path}")


CostsOpt = typer.Option(None, "--costs", help="calibration profile (from `asyncopd calibrate`) for sim.costs")


def _load(config: Path, overrides: Optional[list[str]], costs: Optional[Path] = None) -> OPDConfig:
    try:
        extra: list[str] = []
        if costs is not None:
            extra = profile_overrides(costs)
        return load_config(config, [*extra, *(overrides or [])])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None


def _run_dir(cfg: OPDConfig, kind: str, out: Optional[Path]) -> Path:
    if out is not None:
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.output_dir) / f"{cfg.run.name}-{kind}-{stamp}"


@command()
def check(config: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate a config and print the resolved version."""
    cfg = _load(config, set_)
    console.print(dump_config(cfg))
    console.print(f"[green]ok[/green]: {config} is valid (policy {cfg.policy().describe()})")


@command()
def simulate(config: Path, set_: Optional[list[str]] = SetOpt,
             out: Optional[Path] = typer.Option(None, help="run directory (default: run.output_dir/NAME-sim-TIME)"),
             seed: Optional[int] = typer.Option(None, help="simulation seed (default: run.seed)"),
             seeds: int = typer.Option(1, min=1, help="simulations for the prediction interval (the first is written)"),
             level: float = typer.Option(0.9, min=0.5, max=0.999, help="prediction interval level"),
             costs: Optional[Path] = CostsOpt, plots: bool = PlotsOpt,
             progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Simulate CONFIG with the SimPy driver; write a run directory; print a prediction interval
    of a real run's samples/s (the seeds' spread and sim.costs.run_cv: sim/intervals.py)."""
    from sim.driver import simulate as run_sim  # (lazy: keeps simpy and numpy out of `asyncopd --help`)
    from sim.intervals import costs_interval, scatter_note  # (lazy: scipy)

    cfg = _load(config, set_, costs)
    run_dir = _run_dir(cfg, "sim", out)
    first = cfg.run.seed if seed is None else seed
    summary = run_sim(cfg, run_dir, seed=first, progress=progress)
    rates = [summary["samples_per_s"]] + [run_sim(cfg, None, seed=first + i, progress=False)["samples_per_s"]
                                          for i in range(1, seeds)]
    interval = costs_interval(rates, cfg.sim.costs, level)
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prediction_interval": asdict(interval)}, indent=2))
    console.print(summary_table(f"simulated: {run_dir}", summary))
    console.print(f"a real run's samples/s: {interval.describe()}, with {scatter_note(cfg.sim.costs)}")
    _plots(run_dir, plots)
    exit_unless_ok(err, summary, f"simulated run {run_dir}")


@command()
def predict(config: Path, policy: list[str] = typer.Option(..., "--policy", "-p",
                                                          help="a policy; the first is the baseline"),
            set_: Optional[list[str]] = SetOpt, costs: Optional[Path] = CostsOpt,
            seeds: int = typer.Option(5, min=1, help="simulations per policy (seeds run.seed, run.seed+1, ...)"),
            progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Predict the speedup of each --policy over the first one, with a 95% interval over seeds."""
    from tqdm.auto import tqdm

    from sim.intervals import costs_interval  # (lazy: scipy)
    from sim.predict import predict as run_predict  # (lazy: keeps simpy and numpy out of `asyncopd --help`)

    cfg = _load(config, set_, costs)
    if len(policy) < 2:
        err.print("[red]error:[/red] give at least two --policy values (the first is the baseline)")
        raise typer.Exit(2)
    for p in policy:
        try:
            parse_policy(p)
        except ValueError as e:
            err.print(f"[red]error:[/red] --policy: {e}")
            raise typer.Exit(2) from None
    seed_list = [cfg.run.seed + i for i in range(seeds)]
    with tqdm(total=len(policy) * seeds, desc="simulate", unit="run", disable=not progress, leave=False) as bar:
        preds, speedups = run_predict(cfg, policy, seed_list, on_progress=lambda: bar.update(1))
    intervals = {p.policy: costs_interval(p.throughput, cfg.sim.costs, 0.9) for p in preds}
    console.print(predict_table(f"{config}: {cfg.run.total_steps} steps x {cfg.learner.batch_size} samples, "
                                f"{seeds} seeds", preds, speedups, intervals))


@command()
def train(config: Optional[Path] = typer.Argument(None, help="config file (with --resume: default RUN_DIR/config.yaml)"),
          set_: Optional[list[str]] = SetOpt,
          out: Optional[Path] = typer.Option(None, help="run directory (default: run.output_dir/NAME-train-TIME)"),
          resume: Optional[Path] = typer.Option(None, "--resume", metavar="RUN_DIR",
                                                help="continue RUN_DIR from its newest complete checkpoint"),
          plots: bool = PlotsOpt, progress: bool = typer.Option(True, help="show progress bars"),
          evaluate: bool = typer.Option(True, "--eval/--no-eval", help="held-out accuracy of the student before "
                                        "and after (built-in task)"),
          dry_run: bool = typer.Option(False, "--dry-run", help="check the layout against the cluster Ray reports, "
                                       "print which actor gets which node, device and memory share, and exit "
                                       "without loading models")) -> None:
    """Run the real Ray trainer on CONFIG; write a run directory (or continue one: --resume)."""
    from asyncopd.runtime.driver import train as run_train  # (lazy: keeps numpy out of `asyncopd --help`)

    if dry_run:
        _dry_run(_load(config, set_) if config is not None else None)
        return
    if resume is None:
        if config is None:
            err.print("[red]error:[/red] give a CONFIG file (or --resume RUN_DIR)")
            raise typer.Exit(2)
        cfg = _load(config, set_)
        run_dir = _run_dir(cfg, "train", out)
    else:
        if not resume.is_dir():
            err.print(f"[red]error:[/red] --resume: {resume} is not a directory")
            raise typer.Exit(2)
        if out is not None and out.resolve() != resume.resolve():
            err.print("[red]error:[/red] --resume continues RUN_DIR in place; leave out --out")
            raise typer.Exit(2)
        cfg = _load(config if config is not None else resume / "config.yaml", set_)
        try:
            ck = find_resume_checkpoint(resume, cfg)
        except (ConfigError, FileNotFoundError, ValueError) as e:
            err.print(f"[red]error:[/red] {escape(str(e))}")
            raise typer.Exit(2) from None
        console.print(f"resuming {resume} from {ck.path.name} (step {ck.version} of {cfg.run.total_steps}; "
                      f"prompts from {ck.info.get('next_prompt_id')}, "
                      f"{len(ck.info.get('skipped_prompts', []))} in flight at the checkpoint skipped)")
        run_dir = resume
    summary = run_train(cfg, run_dir, progress=progress, resume=resume is not None, evaluate=evaluate)
    console.print(summary_table(f"trained: {run_dir}", summary))
    _plots(run_dir, plots)
    exit_unless_ok(err, summary, f"run {run_dir}")


def _dry_run(cfg: Any) -> None:
    from asyncopd.runtime.dry_run import dry_run, placement_table  # (lazy: ray)

    if cfg is None:
        err.print("[red]error:[/red] --dry-run: give a CONFIG file")
        raise typer.Exit(2)
    try:
        report = dry_run(cfg)
    except (ValueError, RuntimeError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    console.print(placement_table(cfg.run.name, report))
    for note in report["notes"]:
        console.print(f"[yellow]before training:[/yellow] {escape(note)}")
    console.print(f"[green]valid placement[/green]: {len(report['rows'])} actors placed as the layout says")


@command("eval")
def eval_(checkpoint: Path = typer.Argument(..., help="a checkpoint directory (e.g. RUN/checkpoints/final) or a run "
                                                       "directory (its newest checkpoint)"),
          prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="held-out prompts (default: task.eval_prompts)"),
          seed: Optional[int] = typer.Option(None, help="task seed, which picks the held-out problems "
                                                         "(default: the run's run.seed, else 0)"),
          as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Held-out greedy accuracy of a checkpoint on the built-in task (eval split)."""
    import json

    try:
        r = evaluate_checkpoint(checkpoint, n=prompts, seed=seed)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(r))
        return
    t = Table(title=f"held-out accuracy: {r['checkpoint']}", show_header=False, title_justify="left")
    rows = [("step", "-" if r["version"] is None else str(r["version"])),
            ("task / seed / prompts", f"{r['task']} / {r['seed']} / {r['n']} (eval split, greedy)"),
            ("accuracy (exact match)", f"{r['accuracy']:.1%}"), ("final answer right", f"{r['answer_accuracy']:.1%}"),
            ("well-formed", f"{r['well_formed']:.1%}"), ("ended with EOS", f"{r['eos_rate']:.1%}"),
            ("mean response tokens", f"{r['mean_response_tokens']:.1f}")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


@command()
def compare(real_run: Path, sim_run: Path, plots: bool = PlotsOpt,
            out: Optional[Path] = typer.Option(None, help="report directory (default: REAL_RUN/compare-SIM)")) -> None:
    """Compare a measured run with a simulated one: throughput, staleness (KS), plots."""
    from asyncopd.trace.compare import compare_runs  # (lazy: keeps numpy out of `asyncopd --help`)

    try:
        r = compare_runs(real_run, sim_run, out, plots=plots)
    except FileNotFoundError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        raise typer.Exit(2) from None
    print_compare(console, r)


@command()
def calibrate(config: Optional[Path] = typer.Argument(None, help="config whose models to profile on this machine "
                                                                 "(default: configs/default.yaml)"),
              from_run: Optional[list[Path]] = typer.Option(None, "--from-run", help="fit to a finished run "
                                                                  "directory (real or simulated) instead; repeat it to "
                                                                  "add the device-sharing factors of more runs' layouts "
                                                                  "to the first run's costs"),
              contention: bool = typer.Option(False, "--contention", help="measure every role alone and with each "
                                              "other on one core (CONFIG's models; with --from-run, the run's) and use "
                                              "those sharing factors instead of fitted ones"),
              sharing: Optional[Path] = typer.Option(None, "--sharing", metavar="PROFILE", help="with --from-run: "
                                                     "the sharing factors a --contention PROFILE measured, instead "
                                                     "of fitted ones"),
              window: float = typer.Option(3.0, "--window", help="--contention: seconds per combination and round"),
              rounds: int = typer.Option(2, "--rounds", help="--contention: rounds over all combinations"),
              check: Optional[Path] = typer.Option(None, "--check", metavar="PROFILE",
                                                   help="re-measure a few points and report drift against PROFILE"),
              budget: Optional[float] = typer.Option(None, "--budget", help="seconds of measuring "
                                                                              "(default 60; --check: 15)"),
              threshold: float = typer.Option(0.25, "--threshold", help="--check: a stage has drifted when it is off "
                                                                        "by more than a factor 1+THRESHOLD"),
              out: Optional[Path] = typer.Option(None, help="profile path (default: FROM_RUN/calibration.yaml, "
                                                            "else run.output_dir/NAME-calibration.yaml)"),
              set_: Optional[list[str]] = SetOpt, progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """Fit the simulator's cost model: profile this machine for CONFIG's models (micro-benchmarks of the
    torch engines), fit a recorded run (--from-run), measure device sharing (--contention); --check PROFILE
    re-measures and reports drift (exit 0 ok, 1 drifted, 2 bad input)."""
    from calibration import command  # (lazy: keeps scipy and simpy out of `asyncopd --help`)

    def fail(msg: str) -> None:
        err.print(f"[red]error:[/red] {escape(msg)}")
        raise typer.Exit(2)

    if from_run and (check is not None or config is not None):
        fail("--from-run fits a run; give it without CONFIG or --check")
    if contention and check is not None:
        fail("--contention measures device sharing; give it without --check")
    if sharing is not None and (not from_run or contention):
        fail("--sharing PROFILE goes with --from-run (and instead of --contention)")
    if budget is not None and budget <= 0:
        fail(f"--budget must be > 0 seconds, got {budget:g}")
    if not 0 < threshold:
        fail(f"--threshold must be > 0 (0.25 = 25%), got {threshold:g}")
    if window <= 0 or rounds < 1:
        fail(f"--window must be > 0 s and --rounds >= 1, got {window:g} and {rounds}")
    try:
        if from_run:
            probe = None
            if contention:
                cfg_file = from_run[0] / "config.yaml"
                if not cfg_file.is_file():
                    fail(f"{cfg_file} not found: --contention measures the run's models")
                probe = (_load(cfg_file, set_), window, rounds)
            code = command.from_runs(from_run, out, console, fail, progress=progress, contention=probe,
                                     sharing_profile=sharing)
        elif check is not None:
            code = command.check(check, config, set_ or [], threshold, budget, console, fail, progress=progress)
        else:
            cfg = _load(config or Path("configs/default.yaml"), set_)
            path = out or Path(cfg.run.output_dir) / f"{cfg.run.name}-calibration.yaml"
            if contention:
                code = command.contention_only(cfg, path, console, window_s=window, rounds=rounds, progress=progress)
            else:
                code = command.micro_benchmarks(cfg, config, path, budget, console, fail, progress=progress)
    except typer.Exit:
        raise
    except (ValueError, RuntimeError) as e:  # (typer.Exit is a RuntimeError: re-raised above)
        fail(str(e))
    raise typer.Exit(code)


@command()
def bound(config: Optional[Path] = typer.Argument(None, help="config (default: RUN/config.yaml with --run, else "
                                                             "configs/default.yaml)"),
          run: Optional[Path] = typer.Option(None, "--run", help="a trained run: print its efficiency against the "
                                                                 "bound and store it in its summary.json"),
          window: float = typer.Option(3.0, "--window", help="seconds of each stage's work"),
          out: Optional[Path] = typer.Option(None, help="also write the bound here (JSON)"),
          set_: Optional[list[str]] = SetOpt, progress: bool = typer.Option(True, help="show a progress bar")) -> None:
    """The pipeline's bound: each stage's real work timed alone on its devices; the busiest device caps
    samples/s (asyncopd/trace/efficiency.py). Every trained run's summary holds the same bound from the
    work it measured."""
    from calibration.bound import attach_to_run, bound_table, measure_bound  # (lazy: torch)
    from asyncopd.runtime.setup import resolve_models  # (lazy: torch)

    cfg = _load(config or (run / "config.yaml" if run is not None else Path("configs/default.yaml")), set_)
    b = measure_bound(cfg, resolve_models(cfg), window_s=window, progress=progress)
    console.print(bound_table(b))
    if out is not None:
        out.write_text(json.dumps(b, indent=2))
        console.print(f"bound: {out}")
    if run is not None:
        summary = attach_to_run(run, b)
        console.print(f"{run}: efficiency {efficiency_cell(summary['efficiency'])}")


@command()
def validate(run_dir: Path) -> None:
    """Check a run directory against the documented trace format."""
    try:
        counts = validate_run_dir(run_dir)
    except RunFormatError as e:
        err.print(f"[red]invalid:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"[green]valid[/green]: {run_dir} ({counts})")


@command()
def demo(config: Path = typer.Argument(Path("configs/default.yaml")), set_: Optional[list[str]] = SetOpt,
         calibration_steps: int = typer.Option(150, help="updates of the short real run the simulator is calibrated "
                                               "on first (0: predict with the config's costs)"),
         calibration_runs: int = typer.Option(2, min=1, help="short runs, fits averaged (halves the host's "
                                              "run-to-run scatter in the calibration)"),
         progress: bool = typer.Option(True, help="show progress bars")) -> None:
    """calibrate → simulate → train → compare on CONFIG: the simulator, calibrated on this machine
    by a short real run, predicts the full run before it runs; the demo prints its error."""
    from asyncopd.demo import run_demo  # (lazy: numpy, simpy, ray)

    cfg = _load(config, set_)
    summary = run_demo(cfg, lambda costs: _load(config, set_, costs=costs), console, calibration_steps=calibration_steps,
                       calibration_runs=calibration_runs, progress=progress)
    exit_unless_ok(err, summary, "the demo's training run")


from asyncopd.planner.cli import plan as _plan  # noqa: E402

command("plan")(_plan)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
