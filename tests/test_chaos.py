"""``bench/chaos.py`` in short: workers killed every few seconds and the driver killed once and
resumed, on the default task; nothing lost, nothing duplicated, every kill recovered from."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("chaos", Path(__file__).resolve().parents[1] / "bench" / "chaos.py")
    chaos_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos_bench)
    main = chaos_bench.main
    out = tmp_path / "chaos.json"
    code = main(["--steps", "150", "--kill-every", "1", "--max-kills", "3", "--driver-kill-at", "0.6", "--checkpoint-every", "15",
                 "--no-baseline", "--orphan-wait", "0", "--json", str(out), "--out", str(tmp_path / "runs"),
                 "--set", "learner.batch_size=8", "--set", "learner.micro_batch_size=8"])
    r = json.loads(out.read_text())
    acc, chaos = r["account"], r["chaos"]
    assert code == 0, r
    assert acc["steps"] == 150 and acc["lost"] == 0 and acc["duplicated"] == 0
    assert chaos["driver_kill"] is not None and chaos["returncode"] == 0
    assert len(chaos["kills"]) >= 2 and len(acc["recoveries_s"]) >= 1
    assert all(0 < s < 60 for s in acc["recoveries_s"])
