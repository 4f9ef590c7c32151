"""How long a Ray call takes to reach its worker: submission by the driver to the worker starting.

The controller stamps an action when the answer that caused it arrives; the driver then goes
on handling that answer (the other results of a wave, the recorder) and submits the call when
it gets to it, and the call travels through Ray before the worker starts. The trace holds the
stamp (``issued_at``, ``t_issue``) and the start; this account holds the submission, so the two
parts can be told apart: per kind of call,

    latency = worker's start  -  driver's submission            (seconds, both on one host clock)

``summary.json`` gets ``call_latency`` (written with ``unplaced_cpu``:
``runtime/cpu_accounting.py``): ``{kind: {mean_s, median_s, n}}`` for ``generate`` (a wave),
``score``, ``train`` and ``sync``. ``calibrate --from-run`` takes ``dispatch_s`` and
``rollout_dispatch_s`` from it, and the simulator releases an answer's actions when the
driver has handled it (``sim/driver.py``), so the two halves add up as in the real driver.
"""

from __future__ import annotations

import statistics
from typing import Any

KINDS = {"gen": "generate", "score": "score", "train": "train", "sync": "sync"}


def started_at(kind: str, value: Any) -> float | None:
    """When the worker started the call whose answer is ``value`` (``time.time()``), by the
    answer's shape: a wave's earliest sequence; the start a score, train or sync call returns."""
    if kind == "gen":
        return min((r.started_at for r in value), default=None)
    index = {"score": 1, "train": 2, "sync": 0}.get(kind)
    return None if index is None else float(value[index])


def stall_free_mean(gaps: list[float]) -> float:
    """The mean of ``gaps`` without one-off stalls (gaps over 10x the median: a first call, a
    garbage collection). The mean, not the median, is what a pipeline pays: a right-skewed
    latency's median sits 10-15% below it (learner dispatch on the 2-core host: median
    2.64 ms, mean 3.03 ms)."""
    med = statistics.median(gaps)
    kept = [g for g in gaps if g <= 10 * med] if med > 0 else gaps
    return statistics.fmean(kept)


class CallLatency:
    def __init__(self) -> None:
        self._gaps: dict[str, list[float]] = {}

    def answered(self, kind: str, submitted: float, value: Any, t0: float) -> None:
        """Record the call of ``kind`` submitted at ``submitted`` (run clock: ``time.time() -
        t0``) whose answer is ``value``."""
        start = started_at(kind, value)
        if kind in KINDS and start is not None:
            self._gaps.setdefault(KINDS[kind], []).append(start - t0 - submitted)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: ``mean_s`` (``stall_free_mean``), ``median_s`` and ``n`` calls."""
        return {k: {"mean_s": round(stall_free_mean(g), 7), "median_s": round(statistics.median(g), 7), "n": len(g)}
                for k, g in self._gaps.items() if g}


__all__ = ["KINDS", "CallLatency", "stall_free_mean", "started_at"]
