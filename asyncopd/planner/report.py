"""What a plan reports: rows (one per simulated candidate), CSVs, the terminal table, the Pareto plot.

Columns of ``plan.csv`` (one row per simulated candidate; ranked ones first):

- ``rank``: among the final-length runs meeting the constraints (empty otherwise); 1 is the
  chosen one (``PlanResult.ranked``), the rest by throughput;
- ``policy``, ``layout`` (``[first-last] R<workers>xtp<tp> + T... | ... L tp<tp>``: device
  groups, and the roles sharing each), ``colocation``, ``devices``, per-role workers / tp;
- ``tokens_per_s`` (consumed tokens per second: what the ranking uses), ``samples_per_s`` and
  ``speedup_vs_best_sync`` (in tokens/s, over the best ``sync`` candidate simulated at the same
  length);
- ``staleness_mean`` (mean over consumed samples of their token-weighted mean staleness),
  ``staleness_p95`` / ``staleness_max`` (of the per-sample maximum), in versions;
- ``util_rollout`` / ``util_teacher`` / ``util_learner``: busy fraction of each role;
- ``device_hours_per_1k_steps``: devices x simulated seconds per learner update x 1000 / 3600;
- ``bound_samples_per_s`` and ``bottleneck``: the optimistic throughput and its limiting
  group (``bounds``); ``kv_slots``: sequences per rollout worker after the memory cap;
  ``memory_peak``: the fullest device's share of its usable memory;
- ``steps_simulated`` and ``status`` (``final``, a broken constraint, ``screened out at N steps``);
- ``samples_per_s_low`` / ``samples_per_s_high`` / ``interval_seeds``: the prediction interval
  (``--level``, default 90%) of a real run's samples/s (``intervals.py``): seeds' spread and
  ``sim.costs.run_cv`` for the top candidates, the run-to-run scatter only (1 seed) for the rest;
- ``measured_tokens_per_s`` / ``measured_samples_per_s`` / ``measured_runs``: with ``--verify``,
  the mean over the contender's real runs on this machine (``verify.py``), else empty.

``rejected.csv`` lists the layouts that do not fit in memory with the reason; ``pareto`` marks
the final-length runs no other run beats on both throughput and mean staleness.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from asyncopd.planner.core import PlanResult
from asyncopd.planner.search import Candidate
from asyncopd.planner.space import policy_kind
from asyncopd.trace.formatting import cell


def _row(res: PlanResult, c: Candidate, rank: Optional[int]) -> dict[str, Any]:
    r = c.result or {}
    lay = c.layout
    steps = r.get("steps") or 0
    per_step = r.get("duration_s", 0.0) / steps if steps else None
    sp = res.speedup(c) if c.status == "final" else None
    return {
        "rank": rank, "policy": c.policy, "layout": lay.describe(), "colocation": lay.colocation,
        "devices": lay.devices_used, "rollout_workers": lay.rollout.workers, "rollout_tp": lay.rollout.tp,
        "teacher_workers": lay.teacher.workers, "teacher_tp": lay.teacher.tp, "learner_devices": lay.learner.size,
        "learner_tp": lay.learner.tp, "samples_per_s": r.get("samples_per_s"), "tokens_per_s": r.get("tokens_per_s"),
        "speedup_vs_best_sync": sp, "staleness_mean": r.get("staleness_mean"),
        "staleness_p95": r.get("staleness_p95"), "staleness_max": r.get("staleness_max"),
        "util_rollout": r.get("util_rollout"), "util_teacher": r.get("util_teacher"),
        "util_learner": r.get("util_learner"),
        "device_hours_per_1k_steps": None if per_step is None else lay.devices_used * per_step * 1000 / 3600,
        "bound_samples_per_s": c.bound_value, "bottleneck": c.bound.bottleneck, "kv_slots": c.slots,
        "memory_peak": c.mem.peak_fraction, "rollout_memory_share": c.mem.rollout_share,
        "samples_per_s_low": None if c.interval is None else c.interval.low,
        "samples_per_s_high": None if c.interval is None else c.interval.high,
        "interval_seeds": None if c.interval is None else c.interval.seeds,
        "evicted": r.get("evicted"), "steps_simulated": c.steps, "status": c.status, "pareto": False,
        **_measured(res, c),
    }


def _measured(res: PlanResult, c: Candidate) -> dict[str, Any]:
    """``measured_*`` columns: the mean of the ``--verify`` runs of ``c`` (empty if none)."""
    t = res.verified.get(c.key)
    return {"measured_tokens_per_s": t.tokens_per_s if t else None,
            "measured_samples_per_s": t.samples_per_s if t else None,
            "measured_runs": len(t.runs) if t else None}


def rows(res: PlanResult) -> list[dict[str, Any]]:
    """One row per simulated candidate: ranked ones first, then the other final-length runs,
    then the screened-out ones (longest simulation first, fastest first)."""
    ranked = res.ranked()
    out = [_row(res, c, i + 1) for i, c in enumerate(ranked)]
    seen = {c.key for c in ranked}
    rest = sorted((c for c in res.candidates if c.key not in seen), key=lambda c: (-c.steps, -c.throughput))
    out += [_row(res, c, None) for c in rest]
    best = float("-inf")
    for r in sorted((r for r in out if r["rank"] is not None), key=lambda r: (r["staleness_mean"], -r["tokens_per_s"])):
        if r["tokens_per_s"] > best:
            r["pareto"], best = True, r["tokens_per_s"]
    return out


def rejected_rows(res: PlanResult) -> list[dict[str, Any]]:
    return [{"layout": lay.describe(), "colocation": lay.colocation, "rollout_workers": lay.rollout.workers,
             "rollout_tp": lay.rollout.tp, "teacher_workers": lay.teacher.workers, "teacher_tp": lay.teacher.tp,
             "learner_devices": lay.learner.size, "learner_tp": lay.learner.tp, "reason": why}
            for lay, why in res.rejected]


def write_csv(table: list[dict[str, Any]], path: str | Path, columns: Optional[list[str]] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = columns or (list(table[0]) if table else ["layout", "reason"])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in table:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def render_table(res: PlanResult, table: list[dict[str, Any]], top: int = 10):
    """A rich Table of the ``top`` ranked rows."""
    from rich.table import Table

    unit = "core-h" if res.base.cluster.device_type == "cpu" else "GPU-h"
    t = Table(title=f"best layouts ({res.base.cluster.num_devices} x {res.base.cluster.hardware}, "
                    f"{res.rounds[-1][0] if res.rounds else 0} learner steps simulated)", title_justify="left")
    for col in ("#", "layout", "policy", "tokens/s", "samples/s", "speedup", "staleness mean / p95", "util R / T / L",
                f"{unit}/1k steps", "bottleneck"):
        t.add_column(col)
    for r in [r for r in table if r["rank"] is not None][:top]:
        t.add_row(str(r["rank"]), r["layout"], r["policy"].replace(", on_exceed=evict", ""),
                  cell(r["tokens_per_s"], ",.0f"), cell(r["samples_per_s"], ".3g"),
                  "-" if r["speedup_vs_best_sync"] is None else f"{r['speedup_vs_best_sync']:.2f}x",
                  f"{cell(r['staleness_mean'], '.2f')} / {cell(r['staleness_p95'], 'd')}",
                  " / ".join(f"{r[k]:.0%}" for k in ("util_rollout", "util_teacher", "util_learner")),
                  cell(r["device_hours_per_1k_steps"], ".3g"), r["bottleneck"])
    return t


def pareto_plot(table: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Throughput against mean staleness of the final-length runs (seaborn), the Pareto front
    as a line, the chosen layout starred; screened-out runs in grey (shorter simulations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    final = [dict(r, kind=policy_kind(r["policy"])) for r in table if r["rank"] is not None]
    screened = [r for r in table if r["rank"] is None and r["tokens_per_s"] is not None]
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    if screened:
        ax.scatter([r["staleness_mean"] for r in screened], [r["tokens_per_s"] for r in screened], s=10,
                   color="0.75", label="screened (shorter runs)", zorder=1)
    if final:
        sns.scatterplot(x=[r["staleness_mean"] for r in final], y=[r["tokens_per_s"] for r in final],
                        hue=[r["kind"] for r in final], style=[r["colocation"] for r in final], s=60, ax=ax, zorder=2)
        front = sorted((r for r in final if r["pareto"]), key=lambda r: r["staleness_mean"])
        ax.step([r["staleness_mean"] for r in front], [r["tokens_per_s"] for r in front], where="post",
                color="black", lw=1, label="Pareto front", zorder=3)
        best = final[0]
        ax.scatter([best["staleness_mean"]], [best["tokens_per_s"]], marker="*", s=300, color="gold",
                   edgecolor="black", label="chosen", zorder=4)
    ax.set(xlabel="mean staleness (versions)", ylabel="throughput (consumed tokens/s)", title=title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
