"""Staleness of a sample, per token and per sample.

A token sampled by weights of version ``g`` and consumed by learner update ``s`` (the update
that turns version ``s`` into ``s + 1``) has staleness ``s - g``; 0 means on-policy. For a
sample with version spans ``((g_1, n_1), ..., (g_m, n_m))`` consumed by update ``s``:

    mean  = sum_i n_i * (s - g_i) / sum_i n_i      (token-weighted)
    max   = s - min_i g_i                           (= s - the version it started with)
    min   = s - max_i g_i

A sample with no tokens (an immediate EOS still counts as one token, so this only happens
for degenerate inputs) takes the staleness of the version it started with.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncopd.control.messages import Spans


@dataclass(frozen=True, slots=True)
class Staleness:
    mean: float
    max: int
    min: int


def sample_staleness(spans: Spans, step: int, start_version: int) -> Staleness:
    if len(spans) == 1:  # (the common case, one version sampled every token: the loop below, unrolled)
        v, n = spans[0]
        if n > 0:
            return Staleness(n * (step - v) / n, step - v, step - v)
    total = weighted = 0
    lo = hi = None
    for v, n in spans:
        if n > 0:
            total += n
            weighted += n * (step - v)
            lo = v if lo is None or v < lo else lo
            hi = v if hi is None or v > hi else hi
    if lo is None or hi is None:
        s = step - start_version
        return Staleness(float(s), s, s)
    return Staleness(weighted / total, step - lo, step - hi)


def merge_spans(spans: Spans) -> Spans:
    """Join adjacent runs with the same version and drop empty runs."""
    if len(spans) == 1:  # (the common case: one run)
        v, n = spans[0]
        return ((v, n),) if n > 0 else ()
    out: list[tuple[int, int]] = []
    for v, n in spans:
        if n <= 0:
            continue
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + n)
        else:
            out.append((v, n))
    return tuple(out)
