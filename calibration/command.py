"""``asyncopd calibrate``: what each mode does, behind the command line's option parsing
(``asyncopd/cli.py``). Modes:

- ``CONFIG``: micro-benchmarks of the torch engines (``calibration.profilers``);
- ``--from-run RUN [--from-run RUN2 ...]``: a fit to recorded runs (``calibration.from_run``,
  ``calibration.multi_run``);
- ``--contention``: every role alone and together on one core (``calibration.contention_probe``);
  with ``--from-run``, the measured sharing factors replace the ones the run fit would guess;
- ``--check PROFILE``: re-measure and report drift (``calibration.check``).

Every function returns the exit status: 0 done, 1 drifted (``--check``), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from rich.markup import escape

from asyncopd.config import ConfigError, OPDConfig
from calibration.profile import read_profile, write_profile_dict
from calibration.report import contention_table, drift_table, extras_table, fit_table


def contention_sharing(cfg: OPDConfig, console: Any, *, window_s: float, rounds: int, progress: bool):
    """Measure every combination on one core, print the table; the directed ``Sharing`` and
    the result (``calibration/contention_probe.py``)."""
    from asyncopd.runtime.setup import resolve_models  # (lazy: heavy, per mode)
    from calibration.contention_probe import check_probe_config, measure_contention  # (lazy: heavy, per mode)

    check_probe_config(cfg)
    res = measure_contention(cfg, resolve_models(cfg, progress=progress), window_s=window_s, rounds=rounds,
                             progress=progress)
    console.print(contention_table(res))
    return probe_sharing(res), res


def probe_sharing(res: Any):
    """The directed ``Sharing`` a contention probe's result measured (``ContentionResult``)."""
    from asyncopd.config.colocation import Sharing  # (lazy: heavy, per mode)

    return Sharing(1.0, {k: round(v, 3) for k, v in res.directed.items()})


def measured_sharing(profile: Path):
    """The sharing factors a ``calibrate --contention`` profile measured, as a ``Sharing``."""
    from asyncopd.config.colocation import Sharing  # (lazy: heavy, per mode)

    data = read_profile(profile)
    pairs = ((data.get("sim") or {}).get("costs") or {}).get("colocation_pairs")
    if data.get("contention") is None or not isinstance(pairs, dict) or not pairs:
        raise ValueError(f"{profile}: no measured sharing factors (write one with asyncopd calibrate --contention)")
    return Sharing(1.0, pairs)


def from_runs(runs: list[Path], out: Optional[Path], console: Any, fail: Callable[[str], None], *, progress: bool,
              contention: Optional[tuple[OPDConfig, float, int]] = None, sharing_profile: Optional[Path] = None) -> int:
    from calibration.from_run import write_profile  # (lazy: heavy, per mode)
    from calibration.multi_run import fit_runs  # (lazy: heavy, per mode)

    for run in runs:
        if not (run / "trace.json").is_file():
            fail(f"{run} has no trace.json; is it a run directory?")
    sharing, block, source = None, None, ""
    if sharing_profile is not None:
        sharing, block, source = measured_sharing(sharing_profile), read_profile(sharing_profile)["contention"], \
            f", read from {sharing_profile}"
    elif contention is not None:
        cfg, window_s, rounds = contention
        sharing, res = contention_sharing(cfg, console, window_s=window_s, rounds=rounds, progress=progress)
        block = res.as_dict()
    cal = fit_runs(runs, progress=progress, sharing=sharing)
    if block is not None:
        cal.notes.append(f"sharing factors measured on core {block.get('core')} by calibrate --contention "
                         f"({block.get('rounds')} rounds of {block.get('window_s')} s windows{source}), not fitted")
    path = write_profile(cal, out or runs[0] / "calibration.yaml")
    if block is not None:
        data = read_profile(path)
        data["contention"] = block
        write_profile_dict(data, path)
    more = f" (+ sharing factors from {', '.join(map(str, runs[1:]))})" if len(runs) > 1 else ""
    console.print(fit_table(f"cost model fitted to {runs[0]}{more}", cal.stages))
    for note in cal.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}")
    console.print(f"profile: {path}  (use: asyncopd simulate CONFIG --costs {path})")
    return 0


def contention_only(cfg: OPDConfig, path: Path, console: Any, *, window_s: float, rounds: int, progress: bool) -> int:
    """A profile holding only the measured sharing factors (``simulate --costs`` applies them
    key by key over the config's)."""
    from calibration.profile import hardware  # (lazy: heavy, per mode)

    sharing, res = contention_sharing(cfg, console, window_s=window_s, rounds=rounds, progress=progress)
    config = cfg.model_dump(mode="json")
    config.get("sim", {}).pop("costs", None)
    path = write_profile_dict({"source": "contention", "hardware": hardware(),
                               "sim": {"costs": {"colocation_pairs": sharing.directed}},
                               "contention": res.as_dict(), "config": config}, path)
    console.print(f"profile: {path}  (use: asyncopd simulate CONFIG --costs {path}, or with a run: "
                  f"asyncopd calibrate --from-run RUN --contention)")
    return 0


def check(profile: Path, config: Optional[Path], overrides: list[str], threshold: float, budget: Optional[float],
          console: Any, fail: Callable[[str], None], *, progress: bool) -> int:
    from calibration.check import check_profile  # (lazy: heavy, per mode)

    try:
        res = check_profile(profile, config=config, overrides=overrides, threshold=threshold,
                            budget_s=15.0 if budget is None else budget, progress=progress)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    for note in res.notes:
        console.print(f"note: {note}")
    console.print(drift_table(res))
    console.print(f"verdict: [{'green' if res.ok else 'red'}]{res.verdict}[/]")
    return 0 if res.ok else 1


def micro_benchmarks(cfg: OPDConfig, config: Optional[Path], path: Path, budget: Optional[float], console: Any,
                     fail: Callable[[str], None], *, progress: bool) -> int:
    from calibration.profilers import profile  # (lazy: heavy, per mode)

    dispatch, dispatch_src = None, "the config's sim.costs.dispatch_s"
    if path.is_file():  # keep the dispatch latency of the profile being replaced (it may come from a run)
        try:
            dispatch = float(read_profile(path)["sim"]["costs"]["dispatch_s"])
            dispatch_src = f"the profile it replaced ({path})"
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            dispatch = None
    try:
        prof = profile(cfg, budget_s=60.0 if budget is None else budget, progress=progress, dispatch_s=dispatch,
                       dispatch_source=dispatch_src)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    path = write_profile_dict(prof, path)
    console.print(fit_table(f"cost model profiled on this machine for {config or 'configs/default.yaml'} "
                            f"({len(prof['points'])} points, {prof['elapsed_s']:.0f} s)", prof["fit"]))
    if prof["extras"]:
        console.print(extras_table(prof["extras"]))
    for note in prof["notes"]:
        console.print(f"note: {note}")
    console.print(f"profile: {path}  (use: asyncopd simulate CONFIG --costs {path}; "
                  f"later: asyncopd calibrate --check {path})")
    return 0


__all__ = ["check", "contention_only", "contention_sharing", "from_runs", "measured_sharing", "micro_benchmarks"]
