"""Shared test settings.

torch on this 2-core box collapses when several processes each run 2 intra-op threads, so
tests default to one thread per process (Ray actors set their own from their layout).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs, bound to loopback) for every test that needs one: starting Ray
    costs seconds, and actors from one test module are gone before the next starts."""
    ray = pytest.importorskip("ray")
    from asyncopd.runtime.setup import loopback_only

    if not ray.is_initialized():
        loopback_only()  # (every Ray process listens on 127.0.0.1 only, as in a local run)
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    yield
    ray.shutdown()
