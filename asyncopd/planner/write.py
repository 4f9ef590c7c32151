"""A plan's outputs: ``plan.csv``, ``rejected.csv``, ``plan.json``, ``plan.yaml`` and
``pareto.png`` (``save_plan``), and a config written as YAML (``write_config``).

The configs of candidates are built in ``asyncopd/planner/candidates.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from asyncopd.config.schema import OPDConfig
from asyncopd.planner import report
from asyncopd.planner.core import PlanResult


def write_config(cfg: OPDConfig, path: str | Path, header: list[str] = ()) -> Path:
    """Write ``cfg`` as YAML (``header`` lines become comments on top); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"# {line}\n" for line in header)
    text += yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    path.write_text(text)
    return path


def save_plan(res: PlanResult, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write a plan's outputs into ``out_dir``: ``plan.csv``, ``rejected.csv``, ``plan.json``,
    ``plan.yaml`` (the chosen layout, when one met the constraints) and ``pareto.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = report.rows(res)
    paths = {"csv": report.write_csv(table, out / "plan.csv"),
             "rejected": report.write_csv(report.rejected_rows(res), out / "rejected.csv",
                                          None if res.rejected else ["layout", "reason"])}
    best = res.best
    if best is not None:
        sp = res.speedup(best)
        r = best.result or {}
        header = [f"written by `asyncopd plan` ({res.base.cluster.num_devices} x {res.base.cluster.hardware}): "
                  f"{best.layout.describe()}, {best.policy}",
                  f"predicted {r.get('tokens_per_s', 0):,.0f} tokens/s ({r.get('samples_per_s', 0):.4g} samples/s)"
                  + (f", {sp:.2f}x the best sync layout" if sp else "")
                  + f", mean staleness {r.get('staleness_mean', 0):.2f} (simulated {best.steps} learner steps)"]
        trial = res.verified.get(best.key)
        if trial is not None:
            header.append(f"measured on the planning machine: {trial.tokens_per_s:,.0f} tokens/s "
                          f"({trial.samples_per_s:.4g} samples/s), mean of {len(trial.runs)} runs "
                          f"(asyncopd plan --verify)")
        paths["config"] = write_config(res.chosen_config(best), out / "plan.yaml", header)
    summary = res.summary()
    summary["outputs"] = {k: str(v) for k, v in paths.items()}
    if plots and any(row["rank"] is not None for row in table):
        paths["pareto"] = report.pareto_plot(table, out / "pareto.png",
                                             title=f"{res.base.run.name}: {res.base.cluster.num_devices} x "
                                                   f"{res.base.cluster.hardware}")
        summary["outputs"]["pareto"] = str(paths["pareto"])
    (out / "plan.json").write_text(json.dumps(summary, indent=2, default=str))
    paths["json"] = out / "plan.json"
    return paths
