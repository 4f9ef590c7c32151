"""Collective-communication times both cost models charge (ring algorithms, latency + bandwidth).

With ``n`` ranks, a per-rank link of ``bw`` bytes/s and a latency ``lat`` per ring step, a ring
collective over ``b`` bytes sends ``b / n`` bytes per step::

    reduce-scatter(b), all-gather(b)    (n-1)/n * b / bw +   (n-1) * lat
    all-reduce(b)                     2 (n-1)/n * b / bw + 2 (n-1) * lat   (reduce-scatter + all-gather)

A data-parallel learner on ``n`` ranks moves ``G`` gradient bytes per update (``G`` = the
student's parameters times the bytes of one gradient value: 4 for fp32 on CPU, 2 for bf16):

    ddp    all-reduce(G)                                            k = 2
    fsdp   all-gather(G) in forward and again in backward, then
           reduce-scatter(G) of the gradients                       k = 3

    dp_comm(n) = k (n-1)/n * G / bw + k (n-1) * lat ,   dp_comm(1) = 0                        (2)

(FSDP moves 1.5x DDP's bytes; what it buys is memory: ``asyncopd.planner.memory``.)

A weight sync by bucketed broadcast (``sync.method: collective``, buckets of ``K`` bytes,
``asyncopd/runtime/weight_transport.py``) of ``W`` bytes pays one latency per bucket::

    broadcast(W) = ceil(W / K) * bucket_lat + W / bw                                          (3)

No torch here: these are numbers, shared by ``sim.parametric`` and ``sim.analytic``.
"""

from __future__ import annotations

import math

# collective passes over the gradient bytes per update, per strategy (equation (2))
PASSES = {"ddp": 2, "fsdp": 3}


def dp_comm_s(strategy: str, nbytes: float, n: int, bytes_per_s: float, latency_s: float) -> float:
    """Seconds of the gradient traffic of one data-parallel update on ``n`` ranks, (2)."""
    if n <= 1:
        return 0.0
    k = PASSES[strategy]
    return k * (n - 1) / n * nbytes / bytes_per_s + k * (n - 1) * latency_s


def ring_allreduce_s(nbytes: float, n: int, bytes_per_s: float, latency_s: float) -> float:
    """Seconds of a ring all-reduce of ``nbytes`` over ``n`` ranks (``dp_comm_s`` with ddp)."""
    return dp_comm_s("ddp", nbytes, n, bytes_per_s, latency_s)


def n_buckets(nbytes: float, bucket_bytes: float) -> int:
    """Broadcasts a bucketed sync of ``nbytes`` takes: ``ceil(nbytes / bucket_bytes)``, 0 for nothing."""
    return math.ceil(nbytes / bucket_bytes) if nbytes > 0 else 0


def bucketed_broadcast_s(nbytes: float, bucket_bytes: float, bytes_per_s: float, bucket_latency_s: float) -> float:
    """Seconds of a bucketed broadcast of ``nbytes``, (3)."""
    return n_buckets(nbytes, bucket_bytes) * bucket_latency_s + nbytes / bytes_per_s
