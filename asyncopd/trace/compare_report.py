"""The comparison as a markdown report (``report.md`` next to ``compare.json`` and the PNGs).

One table of predicted (b) against measured (a) figures with their errors — throughput,
mean staleness, per-role utilisation — the distribution distances (KS with its p-value,
Wasserstein in versions), and the plots embedded by relative path, so the directory can be
opened in any markdown viewer or attached to a ticket as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _f(x: Any, nd: int = 3) -> str:
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    """Write ``out/report.md`` from a ``compare_runs`` report; return its path."""
    sp, st = report["samples_per_s"], report["staleness_mean"]
    stale_err = None if st["real"] is None or st["sim"] is None else st["sim"] - st["real"]
    lines = [
        f"# Comparison: {report['real_driver']} run (a) vs {report['sim_driver']} run (b)",
        "",
        f"- a: `{report['real']}`",
        f"- b: `{report['sim']}`",
        "",
        "| quantity | a | b | error (b vs a) |",
        "|---|---:|---:|---:|",
        f"| samples/s | {_f(sp['real'], 2)} | {_f(sp['sim'], 2)} | {_pct(report['throughput_error'])} |",
        f"| mean staleness (versions) | {_f(st['real'])} | {_f(st['sim'])} | {_f(stale_err)} versions |",
    ]
    for role, err in sorted(report.get("utilisation_error", {}).items()):
        ua, ub = report["utilisation"]["real"].get(role), report["utilisation"]["sim"].get(role)
        lines.append(f"| utilisation {role} | {_f(ua, 2)} | {_f(ub, 2)} | {_f(err, 2)} |")
    lines += [
        "",
        f"Staleness distributions: KS = {_f(report['staleness_ks'])} (p = {_f(report['staleness_ks_pvalue'], 4)}), "
        f"Wasserstein = {_f(report['staleness_wasserstein'])} versions.",
        "",
    ]
    titles = {"staleness_hist": "Staleness histograms", "staleness_cdf": "Staleness CDFs",
              "per_step": "Per-step time series"}
    for key, path in report.get("plots", {}).items():
        lines += [f"## {titles.get(key, key)}", "", f"![{key}]({Path(path).name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
