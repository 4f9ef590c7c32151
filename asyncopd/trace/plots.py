"""Plots of one run directory (simulated or measured), with seaborn.

- ``staleness.png``: histogram of per-sample staleness (token-weighted mean) of consumed samples;
- ``utilisation.png``: per-role busy fraction over time, from the trace spans binned in time
  (rollout = share of slots generating; teacher / learner = share of workers busy);
- ``queues.png``: queue depths over time (``queues.csv``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from asyncopd.trace.schema import read_jsonl, read_trace

ROLE_OF_SPAN = {"generate": "rollout", "generate (aborted)": "rollout", "score": "teacher", "train": "learner"}


def utilisation_timeline(run_dir: str | Path, bins: int = 120) -> dict[str, Any]:
    """Busy fraction per role in ``bins`` equal time bins: busy seconds of the role's spans
    inside the bin / (bin width x lanes). Lanes: rollout slots, teacher workers, 1 learner."""
    import json

    d = Path(run_dir)
    events = read_trace(d / "trace.json")
    summary = json.loads((d / "summary.json").read_text())
    info = json.loads((d / "run.json").read_text())
    t_end = summary["duration_s"]
    edges = np.linspace(0.0, t_end, bins + 1)
    busy: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(bins))
    for e in events:
        role = ROLE_OF_SPAN.get(e.get("name", ""))
        if e.get("ph") != "X" or role is None:
            continue
        s, f = e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6
        lo, hi = np.searchsorted(edges, s, "right") - 1, np.searchsorted(edges, f, "left")
        for b in range(max(0, lo), min(bins, hi)):
            busy[role][b] += max(0.0, min(f, edges[b + 1]) - max(s, edges[b]))
    cfg = info["config"]
    lanes = {"rollout": max(1, _rollout_lanes(events) or cfg["layout"]["rollout"]["workers"] * cfg["rollout"]["max_num_seqs"]),
             "teacher": cfg["layout"]["teacher"]["workers"], "learner": 1}
    width = np.diff(edges)
    frac = {r: np.clip(busy[r] / (width * lanes[r]), 0, 1) for r in ("rollout", "teacher", "learner")}
    return {"t": (edges[:-1] + edges[1:]) / 2, **frac}


def _rollout_lanes(events: list[dict[str, Any]]) -> int:
    """Slots actually named in the trace (the simulator may cap them by KV memory)."""
    return sum(1 for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
               and " slot " in e.get("args", {}).get("name", ""))


def plot_run(run_dir: str | Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    d = Path(run_dir)
    paths: dict[str, str] = {}

    stale = [r["staleness_mean"] for r in read_jsonl(d / "samples.jsonl") if r["status"] == "consumed"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    top = max([1.0, *stale])
    sns.histplot(stale, bins=np.arange(0, np.ceil(top) + 0.25, 0.25) - 0.125, stat="probability", ax=ax)
    ax.set(xlabel="per-sample staleness (token-weighted mean, versions)", title=f"staleness: {d.name}")
    fig.tight_layout()
    paths["staleness"] = str(d / "staleness.png")
    fig.savefig(paths["staleness"], dpi=110)
    plt.close(fig)

    u = utilisation_timeline(d)
    df = pd.DataFrame(u).melt(id_vars="t", var_name="role", value_name="busy")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.lineplot(data=df, x="t", y="busy", hue="role", ax=ax)
    ax.set(xlabel="time (s)", ylabel="busy fraction", ylim=(0, 1.05), title=f"utilisation: {d.name}")
    fig.tight_layout()
    paths["utilisation"] = str(d / "utilisation.png")
    fig.savefig(paths["utilisation"], dpi=110)
    plt.close(fig)

    if (d / "queues.csv").is_file():
        q = pd.read_csv(d / "queues.csv")
        cols = [c for c in ("generating", "awaiting_teacher", "scoring", "ready") if c in q]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for c in cols:
            ax.step(q["t"], q[c], where="post", label=c)
        ax.set(xlabel="time (s)", ylabel="samples", title=f"queue depths: {d.name}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["queues"] = str(d / "queues.png")
        fig.savefig(paths["queues"], dpi=110)
        plt.close(fig)
    return paths

