"""The comparison as a markdown report (``report.md`` next to ``compare.json`` and the PNGs).

One table of predicted (b) against measured (a) figures with their errors — throughput,
mean staleness, per-role utilisation — the distribution distances (KS with its p-value,
Wasserstein in versions), and the plots embedded by relative path, so the directory can be
opened in any markdown viewer or attached to a ticket as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncopd.trace.formatting import cell


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
        f"| samples/s | {cell(sp['real'], '.2f')} | {cell(sp['sim'], '.2f')} "
        f"| {cell(report['throughput_error'], '+.1%')} |",
        f"| mean staleness (versions) | {cell(st['real'], '.3f')} | {cell(st['sim'], '.3f')} "
        f"| {cell(stale_err, '.3f')} versions |",
    ]
    for role, err in sorted(report.get("utilisation_error", {}).items()):
        ua, ub = report["utilisation"]["real"].get(role), report["utilisation"]["sim"].get(role)
        lines.append(f"| utilisation {role} | {cell(ua, '.2f')} | {cell(ub, '.2f')} | {cell(err, '.2f')} |")
    lines += [
        "",
        f"Staleness distributions: KS = {cell(report['staleness_ks'], '.3f')} "
        f"(p = {cell(report['staleness_ks_pvalue'], '.4f')}), "
        f"Wasserstein = {cell(report['staleness_wasserstein'], '.3f')} versions.",
        "",
    ]
    titles = {"staleness_hist": "Staleness histograms", "staleness_cdf": "Staleness CDFs",
              "per_step": "Per-step time series"}
    for key, path in report.get("plots", {}).items():
        lines += [f"## {titles.get(key, key)}", "", f"![{key}]({Path(path).name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
