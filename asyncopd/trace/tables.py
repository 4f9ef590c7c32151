"""Rich tables the command line prints: a run's summary, a measured-vs-simulated comparison."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from asyncopd.trace.formatting import cell


def summary_table(title: str, s: dict[str, Any]) -> Table:
    """A run's ``summary.json`` (simulated or trained) as a two-column table."""
    t = Table(title=title, show_header=False, title_justify="left")
    st = s.get("staleness") or {}
    util = s.get("utilisation") or {}
    rows = [
        ("policy", s.get("policy")),
        ("clock", f"{s.get('clock')} ({s.get('duration_s', 0):.1f} s for {s.get('steps')} steps)"),
        ("samples/s", cell(s.get("samples_per_s"))),
        ("tokens/s", cell(s.get("tokens_per_s"))),
        ("learner steps/hour", cell(s.get("steps_per_hour"), ".0f")),
        ("staleness mean / std / max", f"{cell(st.get('mean'))} / {cell(st.get('std'))} / {cell(st.get('max'))}"),
        ("staleness histogram (per-sample max)", str(st.get("hist"))),
        ("utilisation", ", ".join(f"{k} {v:.0%}" for k, v in util.items())),
        ("samples", str(s.get("sample_status"))),
    ]
    if s.get("resumed_from") is not None:
        r = s.get("resume") or {}
        rows.append(("resumed", f"from step {s['resumed_from']} ({r.get('skipped_prompts', 0)} prompts in flight "
                                f"skipped, {r.get('rolled_back_steps', 0)} later steps rolled back)"))
    if s.get("efficiency"):
        rows.append(("efficiency (of the pipeline's bound)", efficiency_cell(s["efficiency"])))
    if s.get("accuracy") is not None:
        start = s.get("accuracy_start")
        before = f"{start:.1%} → " if start is not None else ""
        rows.append(("held-out accuracy (student)", f"{before}{s['accuracy']:.1%}"))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def efficiency_cell(e: dict[str, Any]) -> str:
    """``summary.json`` ``efficiency`` (``trace/efficiency.py``) in one line."""
    b = e["breakdown"]
    text = (f"{e['efficiency']:.0%} of {e['samples_per_s']:.1f} samples/s, the bound of its own work "
            f"({', '.join(e['workers'])} on device {e['device']}: work {b['work']:.0%}, waiting {b['waiting']:.0%}, "
            f"idle {b['idle']:.0%})")
    m = e.get("measured_bound")
    if m:
        text += f"; {m['efficiency']:.0%} of {m['samples_per_s']:.1f} samples/s measured alone (asyncopd bound)"
    return text


def compare_table(r: dict[str, Any]) -> Table:
    """Measured against simulated (``asyncopd compare``): throughput, staleness, utilisation per role."""
    t = Table(title="measured vs simulated", title_justify="left")
    t.add_column("")
    t.add_column(f"{r['real_driver']} (a)")
    t.add_column(f"{r['sim_driver']} (b)")
    t.add_row("samples/s", cell(r["samples_per_s"]["real"]), cell(r["samples_per_s"]["sim"]))
    t.add_row("staleness mean", cell(r["staleness_mean"]["real"]), cell(r["staleness_mean"]["sim"]))
    for role in sorted(set(r["utilisation"]["real"]) | set(r["utilisation"]["sim"])):
        t.add_row(f"utilisation {role}", cell(r["utilisation"]["real"].get(role)),
                  cell(r["utilisation"]["sim"].get(role)))
    return t


def print_compare(console: Any, r: dict[str, Any]) -> None:
    """``compare_table`` and the comparison's one-line statistics, report path and plots."""
    console.print(compare_table(r))
    console.print(f"throughput ratio b/a = {cell(r['throughput_ratio'], '.3f')}   "
                  f"staleness KS = {cell(r['staleness_ks'], '.3f')} (p = {cell(r['staleness_ks_pvalue'], '.3f')})   "
                  f"Wasserstein = {cell(r['staleness_wasserstein'], '.3f')} versions")
    console.print(f"report: {r['out_dir']}/report.md (and compare.json)")
    for name, path in r["plots"].items():
        console.print(f"plot {name}: {path}")


def predict_table(title: str, preds: list[Any], speedups: list[Any], intervals: dict[str, Any]) -> Table:
    """``asyncopd predict``: per policy the samples/s with its 90% prediction interval for a real run
    (``intervals``: policy -> ``sim.intervals.Interval``), staleness, rollout utilisation and the
    speedup over the first policy."""
    t = Table(title=title, title_justify="left")
    for col in ("policy", "samples/s [90% interval of a run]", "staleness mean", "rollout util",
                "speedup vs baseline (95% CI)"):
        t.add_column(col)
    by_policy = {s.policy: s for s in speedups}
    for p in preds:
        sp = by_policy.get(p.policy)
        iv = intervals[p.policy]
        t.add_row(p.policy, f"{p.mean_throughput:.3g} [{iv.low:.3g}, {iv.high:.3g}]",
                  f"{sum(p.staleness_mean) / len(p.staleness_mean):.2f}", f"{p.utilisation.get('rollout', 0):.0%}",
                  "baseline" if sp is None else f"{sp.mean:.2f}x  [{sp.low:.2f}, {sp.high:.2f}]")
    return t
