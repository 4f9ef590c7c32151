"""Compare a measured run with a simulated one (or any two runs).

Throughput: ratio of samples/s (b / a) and its relative error. Staleness: the per-sample
token-weighted mean staleness of consumed samples in each run, compared with the two-sample
Kolmogorov-Smirnov statistic ``D = sup_x |F_a(x) - F_b(x)|`` (scipy.stats.ks_2samp) and the
1-Wasserstein distance (mean absolute difference of the quantile functions, in versions).
Utilisation: per-role busy fraction of each run and the difference (b - a). Plots: the two
staleness histograms side by side, the two CDFs overlaid, and the per-step time series,
written as PNGs next to ``compare.json`` and ``report.md`` (a markdown report of it all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from asyncopd.trace.compare_report import write_markdown
from asyncopd.trace.schema import RunFormatError, read_json, read_jsonl, validate_run_dir


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What a comparison reads of a run directory. A damaged one is refused with the trace
    format's check (``validate_run_dir``), which names the file and what is wrong in it."""
    d = Path(run_dir)
    if not (d / "summary.json").is_file():
        raise FileNotFoundError(f"{d} is not a finished run directory (no summary.json)")
    try:
        run = _read_run(d)
        float(run["summary"]["samples_per_s"]), run["info"]["driver"]  # (what compare_runs reads)
        return run
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        validate_run_dir(d)  # (raises RunFormatError naming the file)
        raise RunFormatError(f"{d}: not a run directory as docs/trace-format.md documents ({e!r})") from None


def _read_run(d: Path) -> dict[str, Any]:
    samples = [r for r in read_jsonl(d / "samples.jsonl") if r["status"] == "consumed"]
    return {
        "dir": d,
        "summary": read_json(d / "summary.json"),
        "info": read_json(d / "run.json"),
        "staleness": np.array([r["staleness_mean"] for r in samples], dtype=float),
        "steps": read_jsonl(d / "log.jsonl"),
    }


def compare_runs(real_dir: str | Path, sim_dir: str | Path, out_dir: str | Path | None = None,
                 *, plots: bool = True) -> dict[str, Any]:
    from scipy import stats

    a, b = load_run(real_dir), load_run(sim_dir)
    out = Path(out_dir) if out_dir else a["dir"] / f"compare-{b['dir'].name}"
    out.mkdir(parents=True, exist_ok=True)
    ta, tb = a["summary"]["samples_per_s"], b["summary"]["samples_per_s"]
    ks = stats.ks_2samp(a["staleness"], b["staleness"]) if len(a["staleness"]) and len(b["staleness"]) else None
    ua, ub = a["summary"].get("utilisation", {}), b["summary"].get("utilisation", {})
    report = {
        "real": str(a["dir"]), "sim": str(b["dir"]),
        "real_driver": a["info"]["driver"], "sim_driver": b["info"]["driver"],
        "samples_per_s": {"real": ta, "sim": tb},
        "throughput_ratio": (tb / ta) if ta else None,
        "throughput_error": (tb - ta) / ta if ta else None,
        "staleness_mean": {"real": _mean(a["staleness"]), "sim": _mean(b["staleness"])},
        "staleness_ks": float(ks.statistic) if ks else None,
        "staleness_ks_pvalue": float(ks.pvalue) if ks else None,
        "staleness_wasserstein": float(stats.wasserstein_distance(a["staleness"], b["staleness"])) if ks else None,
        "utilisation": {"real": ua, "sim": ub},
        "utilisation_error": {r: ub[r] - ua[r] for r in sorted(set(ua) & set(ub))
                              if ua[r] is not None and ub[r] is not None},
        "plots": {},
    }
    if plots:
        report["plots"] = _plot(a, b, out)
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    report["report_md"] = str(write_markdown(report, out))
    report["out_dir"] = str(out)
    return report


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def _plot(a: dict[str, Any], b: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    label_a, label_b = f"{a['info']['driver']}: {a['dir'].name}", f"{b['info']['driver']}: {b['dir'].name}"
    df = pd.concat([pd.DataFrame({"staleness": a["staleness"], "run": label_a}),
                    pd.DataFrame({"staleness": b["staleness"], "run": label_b})], ignore_index=True)
    top = max(1.0, float(df["staleness"].max())) if len(df) else 1.0
    bins = np.arange(0, np.ceil(top) + 0.25, 0.25) - 0.125
    paths = {}

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True, sharey=True)
    for ax, (label, data) in zip(axes, [(label_a, a["staleness"]), (label_b, b["staleness"])]):
        sns.histplot(data, bins=bins, stat="probability", ax=ax, color="C0" if ax is axes[0] else "C1")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("per-sample staleness (token-weighted mean, versions)")
    fig.suptitle("Staleness of consumed samples")
    fig.tight_layout()
    paths["staleness_hist"] = str(out / "staleness_hist.png")
    fig.savefig(paths["staleness_hist"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.8))
    sns.ecdfplot(data=df, x="staleness", hue="run", ax=ax)
    ax.set_xlabel("per-sample staleness (versions)")
    fig.tight_layout()
    paths["staleness_cdf"] = str(out / "staleness_cdf.png")
    fig.savefig(paths["staleness_cdf"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for run, label in ((a, label_a), (b, label_b)):
        steps = [r["step"] for r in run["steps"]]
        axes[0].plot(steps, [r["t_end"] for r in run["steps"]], label=label)
        axes[1].plot(steps, [r["staleness"]["mean"] for r in run["steps"]], label=label)
    axes[0].set(xlabel="learner step", ylabel="time at step end (s)")
    axes[1].set(xlabel="learner step", ylabel="mean staleness of the batch")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths["per_step"] = str(out / "per_step.png")
    fig.savefig(paths["per_step"], dpi=110)
    plt.close(fig)
    return paths
