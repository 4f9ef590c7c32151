"""Check a plan on this machine: a short bake-off of the planner's best layouts with the real trainer.

The simulator ranks layouts from a calibrated cost model; where the top layouts are closer
than the model's error (about 10% on a shared CPU host, see the README's calibration section)
or rest on a device-sharing factor no calibration has measured (``PlanResult.unmeasured_pairs``),
the ranking among them is a guess. ``asyncopd plan --verify K`` settles it by measurement:

1. the contenders are the ``K`` best *distinct layouts* of the simulated ranking, each with the
   policy the ranking gives it first;
2. each runs ``asyncopd train`` for ``--verify-steps`` learner updates, ``--verify-repeats``
   times, round robin (the order reversed on every other round, so a slow spell of the host
   hits all contenders alike);
3. the chosen plan becomes the contender with the highest mean *measured* consumed tokens per
   second (the planner's ranking metric); ``plan.yaml``, ``plan.csv`` (``measured_*``
   columns) and ``plan.json`` (``verify``) are rewritten;
4. with ``--costs PROFILE`` fitted to a run, the bake-off's runs refine it: the pairs of roles
   they put on one device and the profile had not measured get their factor
   (``refine_calibration``; ``OUT/calibration.yaml``, for the next ``asyncopd plan --costs``).

Every finished run is written to ``OUT/verify/`` and ``OUT/verify/verify.json`` is updated
after each, so an interrupted bake-off keeps what it measured. The trainer is imported here
only (``asyncopd.planner`` itself stays free of torch and ray).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from asyncopd.planner.candidates import candidate_config
from asyncopd.trace.schema import write_atomic

if TYPE_CHECKING:
    from asyncopd.planner.core import PlanResult
    from asyncopd.planner.search import Candidate


@dataclass
class Trial:
    key: int  # the candidate's key in the plan
    layout: str
    policy: str
    predicted_tokens_per_s: float
    predicted_samples_per_s: float
    runs: list[dict[str, Any]] = field(default_factory=list)  # per run: tokens/s, samples/s, staleness, dir

    @property
    def tokens_per_s(self) -> float:
        return sum(r["tokens_per_s"] for r in self.runs) / len(self.runs) if self.runs else float("nan")

    @property
    def samples_per_s(self) -> float:
        return sum(r["samples_per_s"] for r in self.runs) / len(self.runs) if self.runs else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measured_tokens_per_s": self.tokens_per_s,
                "measured_samples_per_s": self.samples_per_s}


def contenders(res: "PlanResult", k: int) -> list["Candidate"]:
    """The ``k`` best distinct layouts of the ranking, each with its first-ranked policy."""
    out: dict[str, Candidate] = {}
    for c in res.ranked():
        out.setdefault(c.layout.describe(), c)
        if len(out) == k:
            break
    return list(out.values())


def check_runnable(res: "PlanResult") -> None:
    """Raise ValueError (naming ``--verify``) when this machine cannot run the plan's cluster."""
    cl = res.base.cluster
    if cl.device_type == "cpu":
        have = os.cpu_count() or 1
        if cl.num_devices > have:
            raise ValueError(f"--verify runs the plan on this machine, which has {have} CPU cores; "
                             f"the plan is for {cl.num_devices}")
        return
    import torch

    have = torch.cuda.device_count()
    if cl.num_devices > have:
        raise ValueError(f"--verify runs the plan on this machine, which has {have} CUDA devices; "
                         f"the plan is for {cl.num_devices} x {cl.hardware}")


def bake_off(configs: dict[str, Any], out_dir: Path, *, repeats: int, progress: bool = True,
             on_run: Callable[[str, dict[str, Any]], None] = lambda name, run: None, desc: str = "runs") -> None:
    """Run every config of ``configs`` (name -> ``OPDConfig``) with the real trainer ``repeats``
    times, round robin with the order reversed every other round (a slow spell of the host hits
    every config alike), into ``out_dir/contender{i}-run{r}``; ``on_run(name, run)`` after each
    run with its tokens/s, samples/s, mean staleness and directory. ``bench/plan_choice.py``
    runs its comparison with it too."""
    from tqdm.auto import tqdm

    from calibration.fidelity import measure  # (lazy: calibration builds on asyncopd; this loads the trainer, scipy)

    names = list(configs)
    with tqdm(total=len(names) * repeats, desc=desc, unit="run", disable=not progress) as bar:
        for rep in range(repeats):
            for i, name in (list(enumerate(names)) if rep % 2 == 0 else list(enumerate(names))[::-1]):
                bar.set_postfix_str(name)
                run_dir = out_dir / f"contender{i}-run{rep}"
                s = measure(configs[name], run_dir)
                on_run(name, {"tokens_per_s": s["tokens_per_s"], "samples_per_s": s["samples_per_s"],
                              "staleness_mean": (s.get("staleness") or {}).get("mean"), "run_dir": str(run_dir)})
                bar.update()


def verify_plan(res: "PlanResult", out_dir: str | Path, *, k: int = 3, steps: int = 100, repeats: int = 2,
                progress: bool = True) -> list[Trial]:
    """Run the bake-off (module docstring) and make its winner the plan's choice
    (``res.verified``); returns the trials, best measured first."""
    if k < 1 or steps < 1 or repeats < 1:
        raise ValueError(f"--verify, --verify-steps and --verify-repeats must be >= 1 (got {k}, {steps}, {repeats})")
    check_runnable(res)
    out = Path(out_dir) / "verify"
    out.mkdir(parents=True, exist_ok=True)
    trials: dict[str, Trial] = {}
    configs = {}
    for c in contenders(res, k):
        name = f"{c.layout.describe()} {c.policy}"
        trials[name] = Trial(c.key, c.layout.describe(), c.policy, c.throughput,
                             (c.result or {}).get("samples_per_s", 0.0))
        configs[name] = candidate_config(res.base, c.layout.section(), c.policy, c.mem.rollout_share, steps)

    def record(name: str, run: dict[str, Any]) -> None:
        trials[name].runs.append(run)
        write_atomic(out / "verify.json", json.dumps([t.as_dict() for t in trials.values()], indent=2))

    bake_off(configs, out, repeats=repeats, progress=progress, on_run=record, desc="verify")
    ranked = sorted(trials.values(), key=lambda t: -t.tokens_per_s)
    res.verified = {t.key: t for t in ranked}
    return ranked


def refine_calibration(profile: str | Path, trials: list[Trial], out_dir: str | Path,
                       progress: bool = True) -> tuple[Path | None, str]:
    """Close the loop: add the sharing factors the bake-off's runs show to the calibration the
    plan used (``calibrate --from-run SOURCE [--from-run ...] --from-run VERIFY_RUNS``, see
    ``calibration.multi_run.fit_runs``). Returns the new profile (``OUT/calibration.yaml``; None
    when the profile is not from a run, or its source run is gone) and a one-line message."""
    # (lazy: calibration builds on asyncopd, so the planner imports it where used; these load scipy, simpy)
    from calibration.from_run import write_profile
    from calibration.multi_run import fit_runs
    from calibration.profile import read_profile

    data = read_profile(profile)
    source = data.get("source_run")
    if not source or not (Path(source) / "trace.json").is_file():
        return None, (f"{profile} is not fitted to a run that is still here, so the bake-off's runs cannot "
                      f"refine it; to do it by hand: asyncopd calibrate --from-run REFERENCE_RUN "
                      f"--from-run {Path(out_dir) / 'verify'}/contender0-run0 ...")
    before = (data.get("sim") or {}).get("costs", {}).get("colocation_pairs") or {}
    runs = [source, *data.get("sharing_runs", []), *(r["run_dir"] for t in trials for r in t.runs)]
    cal = fit_runs([Path(r) for r in runs if (Path(r) / "trace.json").is_file()], progress=progress)
    path = write_profile(cal, Path(out_dir) / "calibration.yaml")
    pairs = cal.costs().get("colocation_pairs", {})
    new = {p: v for p, v in pairs.items() if p not in before}
    what = ", ".join(f"{p}={v:g}" for p, v in new.items()) or "no pair it had not measured"
    return path, f"calibration refined with the bake-off's runs ({what}): {path}"
