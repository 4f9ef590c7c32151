"""Hardware micro-benchmarks of the torch backend, fitted into a calibration profile.

``profile(cfg)`` drives the engines the trainer's actors use (``TorchRolloutEngine``,
``TorchTeacherScorer``, ``TorchLearner`` and the rollout worker's weight-load path), pinned to
each role's devices as the actors pin themselves, over small grids (one module per job):

- ``rollout``: decode step time over active sequences x context length; prefill over prompt tokens;
- ``teacher``: scoring time over tokens and top-k;
- ``learner``: update time over tokens and micro-batch sizes;
- ``sync``: weight-load time over model sizes;

then fits ``SimCosts`` (``calibration.fit``) and returns the profile mapping
(``calibration.profile`` writes it). What a point measures is what the actor pays minus the
Ray call around it: ``dispatch_s`` cannot be profiled this way and is carried over.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from asyncopd.runtime.setup import resolve_models
from calibration.fit import fit_points
from calibration.profile import hardware, model_spec
from calibration.profilers.bench import Bench
from calibration.profilers.runner import MIN_POINTS, STAGE_FUNCS, measure_plans, plan_all

__all__ = ["Bench", "MIN_POINTS", "STAGE_FUNCS", "measure_plans", "plan_all", "profile"]


def _model_info(spec: Any, model: Any) -> dict[str, Any]:
    return {"spec": model_spec(spec), "params": int(sum(p.numel() for p in model.parameters())),
            "bytes": int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))}


def profile(cfg: Any, *, budget_s: float = 60.0, progress: bool = True, models: Any = None,
            dispatch_s: Optional[float] = None, dispatch_source: str = "the config's sim.costs.dispatch_s") -> dict[str, Any]:
    """Profile ``cfg``'s models on this machine; the calibration profile as a mapping."""
    if models is None:
        models = resolve_models(cfg, progress=progress)
    t0 = time.perf_counter()
    bench = Bench(cfg, models, seed=cfg.run.seed)
    plans = plan_all(bench)
    points = measure_plans(bench, plans, max(0.0, budget_s - (time.perf_counter() - t0)), progress=progress)
    fit = fit_points(points, top_k=cfg.teacher.top_k, micro_batch_size=cfg.learner.micro_batch_size)
    student, teacher = _model_info(cfg.models.student, bench.rollout.model), _model_info(cfg.models.teacher,
                                                                                       bench.teacher.model)
    dispatch = cfg.sim.costs.dispatch_s if dispatch_s is None else float(dispatch_s)
    costs = fit.costs(student["bytes"], dispatch)
    notes = [f"dispatch_s (the Ray call from an action to its worker starting) is not profiled: {dispatch:g} s "
             f"kept from {dispatch_source}"]
    old = cfg.sim.costs.model_dump()
    for stage in STAGE_FUNCS:
        if stage not in fit.stages:
            notes.append(f"{stage}: too few distinct points to fit; its parameters are the config's")
    for name in ("decode_per_kv_token_s", "teacher_per_token_topk_s", "learner_per_micro_batch_s"):
        if name not in fit.extras:
            notes.append(f"{name}: not enough points within the budget to fit it")
    costs = {k: costs.get(k, old[k]) for k in old}
    config = cfg.model_dump(mode="json")
    config.get("sim", {}).pop("costs", None)
    return {
        "source": "profile",
        "sim": {"costs": costs},
        "fit": {k: {"params": v.params, "mape": v.mape, "n": v.n} for k, v in fit.stages.items()},
        "extras": fit.extras,
        "notes": notes,
        "hardware": hardware(dict(bench.threads)),
        "model": {"student": student, "teacher": teacher, "dtype": cfg.models.dtype},
        "budget_s": float(budget_s),
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "config": config,
        "points": points,
    }
