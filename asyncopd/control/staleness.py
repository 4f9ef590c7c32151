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

from typing import Optional

from asyncopd.control.messages import Spans, frozen_record


@frozen_record
class Staleness:
    mean: float
    max: int
    min: int


SpanTotals = tuple[int, Optional[int], Optional[int], int]  # (tokens, oldest, newest, version x tokens)


def staleness_of(totals: SpanTotals, step: int, start_version: int) -> Staleness:
    """The staleness at update ``step`` of spans with these totals (``merged_with_totals``).
    The mean's numerator ``sum_i n_i (s - g_i) = s sum_i n_i - sum_i g_i n_i`` is an exact
    integer, so this is the module docstring's ratio to the last bit, in O(1)."""
    tokens, oldest, newest, version_tokens = totals
    if oldest is None or newest is None:
        s = step - start_version
        return Staleness(float(s), s, s)
    return Staleness((step * tokens - version_tokens) / tokens, step - oldest, step - newest)


def merged_with_totals(spans: Spans) -> tuple[Spans, SpanTotals]:
    """``spans`` with adjacent runs of the same version joined and empty runs dropped, and
    what their staleness at any step depends on, over the runs with tokens:
    ``(sum n_i, min g_i, max g_i, sum g_i * n_i)`` (versions None: no tokens); one pass."""
    if len(spans) == 1:  # (the common case, one version sampled every token: the loop below, unrolled)
        v, n = spans[0]
        return (((v, n),), (n, v, v, v * n)) if n > 0 else ((), (0, None, None, 0))
    out: list[tuple[int, int]] = []
    tokens = version_tokens = 0
    oldest = newest = None
    for v, n in spans:
        if n <= 0:
            continue
        tokens += n
        version_tokens += v * n
        if oldest is None or v < oldest:
            oldest = v
        if newest is None or v > newest:
            newest = v
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + n)
        else:
            out.append((v, n))
    return tuple(out), (tokens, oldest, newest, version_tokens)
