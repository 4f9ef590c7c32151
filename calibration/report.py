"""Rich tables for ``asyncopd calibrate``: a fit, its extras, a drift check."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def fit_table(title: str, fit: dict[str, Any]) -> Table:
    """``fit``: stage -> ``StageFit`` or ``{"params", "mape", "n"}``."""
    t = Table(title=title, title_justify="left")
    for col in ("stage", "parameters", "MAPE", "n"):
        t.add_column(col)
    for stage, f in fit.items():
        params, mape, n = (f["params"], f["mape"], f["n"]) if isinstance(f, dict) else (f.params, f.mape, f.n)
        t.add_row(stage, _params(params), f"{mape:.1%}", str(n))
    return t


def _params(params: dict[str, Any]) -> str:
    """``a=0.1, pairs={x=0.9, y=1.2}``: numbers to 3 significant digits, mappings inline."""
    return ", ".join(f"{k}={{{_params(v)}}}" if isinstance(v, dict) else f"{k}={v:.3g}" for k, v in params.items())


EXTRA_MEANING = {
    "decode_per_kv_token_s": "per n x kv token",
    "teacher_per_token_topk_s": "per token x top-k",
    "learner_per_micro_batch_s": "per micro-batch",
}


def extras_table(extras: dict[str, dict[str, Any]]) -> Table:
    t = Table(title="not in the simulator's cost model (share = its part of the largest point's time)",
              title_justify="left")
    for col in ("term", "meaning", "value", "share", "MAPE with it"):
        t.add_column(col)
    for k, e in extras.items():
        t.add_row(k, EXTRA_MEANING.get(k, ""), f"{e['value']:.3g}", f"{e['share_at_max']:.0%}", f"{e['mape']:.1%}")
    return t


def drift_table(res: Any) -> Table:
    lo, hi = 1 / (1 + res.threshold) - 1, res.threshold
    t = Table(title=f"re-measured vs {res.profile} (source: {res.source}); ok within {lo:+.0%} .. {hi:+.0%}",
              title_justify="left")
    for col in ("stage", "points", "measured (median)", "profile predicts", "drift", "refit on these points"):
        t.add_column(col)
    for s, d in res.stages.items():
        flag = "red" if d.deviation > res.threshold else "green"
        params = ", ".join(f"{k} {'n/a' if c is None else f'{c:+.0%}'}" for k, (_o, _n, c) in d.params.items())
        t.add_row(s, str(d.n), f"{d.measured_s * 1e3:.3g} ms", f"{d.predicted_s * 1e3:.3g} ms",
                  f"[{flag}]{d.drift:+.0%}[/{flag}]", params or "-")
    return t


def contention_table(res: Any) -> Table:
    """Slowdown of each role in each combination on one core (``calibration/contention_probe.py``),
    with its range over the rounds, the CPU share it got and its CPU inflation, and the triple's
    additive check."""
    t = Table(title=f"contention on core {res.core} ({res.rounds} rounds x {res.window_s:g} s per combination; "
                    f"alone: " + ", ".join(f"{r} {s * 1e3:.0f} ms/unit" for r, s in res.alone_s.items()) + ")",
              title_justify="left")
    for col in ("combination", "role", "slowdown", "CPU share", "CPU inflation", "additive rule"):
        t.add_column(col)
    last = "+".join(res.triple)
    for combo, members in res.slowdown.items():
        if "+" not in combo:
            continue
        for i, (role, s) in enumerate(members.items()):
            add = ""
            if combo == last:
                m, a = res.triple[role]
                add = f"{a:.2f} ({a / m - 1:+.0%})"
            lo, hi = res.slowdown_range.get(combo, {}).get(role, (s, s))
            shown = f"{s:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if res.rounds > 1 else "")
            t.add_row(combo if i == 0 else "", role, shown, f"{res.cpu_share[combo][role]:.0%}",
                      f"{res.cpu_inflation[combo][role]:.2f}x", add)
    return t
