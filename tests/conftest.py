"""Shared test settings.

torch on this 2-core box collapses when several processes each run 2 intra-op threads, so
tests default to one thread per process (Ray actors set their own from their layout).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
