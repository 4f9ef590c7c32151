"""The simulator's and the planner's outputs are bit-identical to the recorded fingerprints.

A refactor (issue 12) or a speed-up must not change what the simulator writes. When a change
means to (a new cost term, another rule), re-record in the same commit and say why:
``python bench/sim_fingerprint.py --write bench/sim_fingerprints.json``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("sim_fingerprint", REPO / "bench" / "sim_fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_simulated_outputs_match_the_recorded_fingerprints() -> None:
    want = json.loads((REPO / "bench" / "sim_fingerprints.json").read_text())
    got = _bench_module().fingerprints(None)
    changed = sorted(f"{case}/{name}" for case, files in got.items() for name, digest in files.items()
                     if want.get(case, {}).get(name) != digest)
    assert set(got) == set(want)
    assert not changed, f"simulated outputs changed: {changed} (re-record only if that is the point of the change)"
