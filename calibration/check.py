"""``asyncopd calibrate --check PROFILE``: re-measure a few points, compare with the profile.

For every stage the first ``MIN_POINTS`` points of its grid (spread over the grid, at the
config's top-k and micro-batch size) are measured again with the same micro-benchmarks, and
compared with what the profile's ``sim.costs`` predict for them (``calibration.fit.predict``,
i.e. what the simulator would charge):

    stage drift = median over the stage's points of (measured / predicted) - 1

The verdict is ``ok`` when every stage is within a factor ``1 + threshold`` of the profile in
either direction, ``max(r, 1/r) - 1 <= threshold`` with ``r = 1 + drift`` (default 25%: ``r`` in
[0.8, 1.25]), else ``drifted: re-calibrate``. For information, each stage is also refitted on the new points alone
and every parameter's relative change is shown (few points: the fixed terms are noisy; the
verdict uses the stage drifts only).

The models and grids come from the profile's stored ``config`` (or a CONFIG given on the command
line). A profile fitted to a run (``source: run``) is checked the same way when it holds the run's
config, with a caveat: its times include the Ray calls and contention between roles that share
devices, which the micro-benchmarks leave out, so its stages tend to read as slower than measured.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from asyncopd.config import OPDConfig, load_config
from asyncopd.config.loader import apply_override, format_validation_error
from asyncopd.runtime.setup import resolve_models
from calibration.fit import STAGES, fit_stage, predict
from calibration.profile import profile_costs, read_profile
from calibration.profilers import MIN_POINTS, Bench, measure_plans, plan_all


@dataclass
class StageDrift:
    stage: str
    n: int
    measured_s: float  # median measured seconds over the stage's points
    predicted_s: float  # median predicted seconds
    drift: float  # median of measured / predicted, minus 1
    params: dict[str, tuple[float, float, Optional[float]]] = field(default_factory=dict)  # old, new, change

    @property
    def deviation(self) -> float:
        """``max(r, 1/r) - 1``: how far off the profile is, whichever way."""
        r = 1.0 + self.drift
        return math.inf if r <= 0 or not math.isfinite(r) else max(r, 1.0 / r) - 1.0


@dataclass
class CheckResult:
    profile: str
    source: str
    threshold: float
    stages: dict[str, StageDrift] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d.deviation <= self.threshold for d in self.stages.values())

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "drifted: re-calibrate"


def config_for(path: str | Path, data: dict[str, Any], config: Optional[Path], overrides: Iterable[str]) -> Any:
    """The config to re-measure with: ``config`` if given, else the one stored in the profile."""
    from pydantic import ValidationError

    if config is not None:
        return load_config(config, list(overrides))
    tree = data.get("config")
    if not isinstance(tree, dict):
        src = f"fitted to run {data['source_run']}" if data.get("source_run") else "no config stored"
        raise ValueError(f"{path}: this profile holds no config ({src}), so there are no models to re-measure; "
                         f"give one: asyncopd calibrate CONFIG --check {path}")
    import copy

    tree = copy.deepcopy(tree)
    for o in overrides:
        apply_override(tree, o)
    try:
        return OPDConfig.model_validate(tree)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, f"{path} (its config)")) from None


def _param_changes(stage: str, old: Any, new: dict[str, float]) -> dict[str, tuple[float, float, Optional[float]]]:
    out = {}
    for k, v in new.items():
        if k == "sync_inv_bandwidth":
            k, v = "sync_bytes_per_s", (1.0 / v if v > 0 else math.inf)
        was = float(getattr(old, k))
        out[k] = (was, v, (v / was - 1.0) if was > 0 and math.isfinite(v) else None)
    return out


def check_profile(path: str | Path, *, config: Optional[Path] = None, overrides: Iterable[str] = (),
                  budget_s: float = 15.0, threshold: float = 0.25, progress: bool = True,
                  models: Any = None) -> CheckResult:
    """Re-measure and compare (module docstring). Raises ``FileNotFoundError`` / ``ValueError`` /
    ``ConfigError`` on a bad profile or config."""
    data = read_profile(path)
    costs = profile_costs(path, data)
    cfg = config_for(path, data, config, overrides)
    res = CheckResult(str(path), str(data.get("source", "unknown")), float(threshold))
    if res.source == "run":
        res.notes.append("profile fitted to a run: its times include Ray calls and contention between roles that "
                         "share devices; the micro-benchmarks measure the engines alone, so expect them faster")
    if models is None:
        models = resolve_models(cfg, progress=progress)
    bench = Bench(cfg, models, seed=cfg.run.seed + 1)
    points = measure_plans(bench, plan_all(bench), budget_s, limit=MIN_POINTS, progress=progress)
    res.points = points
    decode_fit = None
    for stage in STAGES:
        pts = [p for p in points if p["stage"] == stage]
        if not pts:
            continue
        pred = [predict(costs, p) for p in pts]
        ratios = [p["seconds"] / q if q > 0 else math.inf for p, q in zip(pts, pred)]
        d = StageDrift(stage, len(pts), statistics.median(p["seconds"] for p in pts), statistics.median(pred),
                       statistics.median(ratios) - 1.0)
        refit = fit_stage(stage, pts, decode_fit)
        if stage == "decode":
            decode_fit = refit
        if refit is not None:
            d.params = _param_changes(stage, costs, refit.params)
        res.stages[stage] = d
    return res
