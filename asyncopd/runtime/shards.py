"""Split a learner batch across data-parallel ranks, balanced by tokens (pure Python).

A rank's forward/backward costs about its response tokens, and an update waits for the slowest
rank, so the split minimises the largest shard's tokens: items in decreasing token count go
each to the rank with the fewest tokens so far (ties: fewer items, then the lower rank). This
is Graham's longest-processing-time rule: the largest shard is within ``4/3 - 1/(3N)`` of the
best possible. The first ``N`` items land on ``N`` different ranks, so every rank gets an item
whenever the batch has ``N`` or more. Each shard keeps the batch's order.
"""

from __future__ import annotations


def split_by_tokens(tokens: list[int], ranks: int) -> list[list[int]]:
    """Indices into ``tokens`` (one entry per item) for each of ``ranks`` shards."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    load = [(0, 0, r) for r in range(ranks)]  # (tokens, items, rank)
    shards: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        t, n, r = min(load)
        shards[r].append(i)
        load[r] = (t + tokens[i], n + 1, r)
    return [sorted(s) for s in shards]
