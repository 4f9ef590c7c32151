"""A yardstick for how busy the shared host is, printed next to benchmark timings."""

from __future__ import annotations

import time


def reference_loop_s() -> float:
    """CPU seconds of a fixed pure-Python loop (about 0.42 s on a quiet 2-core machine of this
    project's kind; higher means the host was busy while the benchmark ran)."""
    c0 = time.process_time()
    d: dict[int, int] = {}
    for i in range(3_000_000):
        d[i & 1023] = d.get(i & 1023, 0) + i
    return time.process_time() - c0
