"""bench/peers.py: time to reach an accuracy, the run order, the summary and table (no TRL
needed); a tiny end-to-end run against TRL when TRL is installed (slow)."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_time_to_reach(peers):
    curve = [(10.0, 0.30), (0.0, 0.08), (5.0, 0.25), (15.0, 0.29), (20.0, 0.40)]
    assert peers.time_to_reach(curve, 0.30) == 10.0  # first point at or above, in time order
    assert peers.time_to_reach(curve, 0.25) == 5.0
    assert peers.time_to_reach(curve, 0.08) == 0.0  # the starting student counts
    assert peers.time_to_reach(curve, 0.41) is None
    assert peers.time_to_reach([(3.0, 0.1 + 0.2)], 0.3) == 3.0  # (float round-off is not a miss)
    assert peers.time_to_reach([], 0.1) is None


def test_run_order_interleaves_trainers(peers):
    order = peers.run_order([0, 1], ["forward_kl", "reverse_kl"])
    assert len(order) == 12
    assert order[:3] == [(0, "forward_kl", "trl"), (0, "forward_kl", "sync"), (0, "forward_kl", "async")]
    assert order[3][:2] == (0, "reverse_kl") and order[6][:2] == (1, "forward_kl")
    for i in range(0, 12, 3):  # every (seed, loss) is run by every trainer back to back, TRL first
        assert [t for _, _, t in order[i:i + 3]] == ["trl", "sync", "async"]
        assert len({(s, loss) for s, loss, _ in order[i:i + 3]}) == 1


def _run(trainer, seed, curve, train_s=60.0, steps=300, samples_per_s=80.0, cpu_s=100.0):
    return {"trainer": trainer, "label": trainer.upper(), "loss": "forward_kl", "seed": seed, "curve": curve,
            "train_s": train_s, "steps": steps, "samples_per_s": samples_per_s, "cpu_s": cpu_s}


def test_summarize_and_table(peers):
    runs = [
        _run("trl", 0, [(0.0, 0.08), (30.0, 0.30), (60.0, 0.40)]),
        _run("sync", 0, [(0.0, 0.08), (20.0, 0.41), (60.0, 0.5)]),
        _run("async", 0, [(0.0, 0.08), (12.0, 0.45), (60.0, 0.6)]),
        _run("trl", 1, [(0.0, 0.08), (50.0, 0.36), (60.0, 0.35)], train_s=50.0),
        _run("sync", 1, [(0.0, 0.08), (60.0, 0.30)]),
        _run("async", 1, [(0.0, 0.08), (10.0, 0.36), (60.0, 0.5)]),
    ]
    rows = {r["trainer"]: r for r in peers.summarize(runs)["forward_kl"]}
    assert list(rows) == ["trl", "sync", "async"]
    trl, sync, asy = rows["trl"], rows["sync"], rows["async"]
    assert trl["reach"] == {0: 60.0, 1: 50.0} and trl["frac_mean"] == pytest.approx((1.0 + 1.0) / 2)
    assert trl["final"] == [0.40, 0.35] and trl["final_mean"] == pytest.approx(0.375)
    # async: 12 s of TRL's 60 s (seed 0), 10 s of TRL's 50 s (seed 1)
    assert asy["reach"] == {0: 12.0, 1: 10.0}
    assert asy["reach_mean"] == pytest.approx(11.0) and asy["frac_mean"] == pytest.approx((0.2 + 0.2) / 2)
    assert sync["reach"] == {0: 20.0, 1: None} and sync["reached"] == 1
    assert sync["reach_mean"] is None and sync["frac_mean"] is None
    assert asy["cores"] == pytest.approx(100.0 / 60.0)

    cells, text = peers.footnotes(8, 71, 16, "fully_async(eta=2)", 10)
    assert set(cells) == {"trl", "sync", "async"} and len(text) == 4 and "top_k=71" in text[0]
    buf = io.StringIO()
    Console(file=buf, width=250).print(peers.render_table("forward_kl", list(rows.values()), 60, cells))
    out = buf.getvalue()
    assert "not reached in 1/2 (20.0, never)" in out
    assert "11.0 (12.0, 10.0)" in out and "0.20" in out
    assert "37.5% (40.0%, 35.0%)" in out and "full vocab" in out


def test_time_split(peers):
    trl = {**_run("trl", 0, []), "samples": 1000, "train_s": 6.0, "generate_s": 4.0}
    line = peers.time_split([trl], "TRL")
    assert "6.00 ms wall per sample" in line and "generate 4.00 ms" in line and "the rest" in line and "2.00 ms" in line
    eff = {"samples_per_s": 200.0, "device_s_per_sample": {"0": 0.005, "1": 0.002}}
    a = {**_run("async", 0, [], samples_per_s=150.0), "efficiency": eff}
    line = peers.time_split([a, {**a, "samples_per_s": 130.0}], "async")
    assert "core 0 5.00 ms, core 1 2.00 ms" in line and "at most 200 samples/s; measured 140 (70% of that bound)" in line
    assert peers.time_split([], "x") is None and peers.time_split([_run("sync", 0, [])], "sync") is None


def test_plot_writes_png(peers, tmp_path):
    runs = [_run("trl", 0, [(0.0, 0.08), (60.0, 0.4)]), _run("sync", 0, [(0.0, 0.08), (30.0, 0.3), (60.0, 0.5)])]
    path = peers.plot(runs, tmp_path / "p.png")
    assert path.is_file() and path.stat().st_size > 1000


def test_without_trl_one_line_and_exit_2(peers, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert peers.main(["--budget", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "bench/peers.py needs TRL: pip install -e '.[peers]'"


def test_bad_flags_exit_2(peers):
    for argv in (["--losses", "dense"], ["--trainers", "vllm"], ["--seeds", "a"], ["--budget", "0"]):
        with pytest.raises(SystemExit) as e:
            peers.main(argv)
        assert e.value.code == 2


@pytest.mark.slow
def test_end_to_end_against_trl(peers, tmp_path):
    """TRL and asyncopd sync for a few seconds each: curves, a table, results.json, the plot."""
    pytest.importorskip("trl")
    rc = peers.main(["--budget", "6", "--seeds", "0", "--losses", "forward_kl", "--trainers", "trl,sync",
                     "--every", "5", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    runs = {r["trainer"]: r for r in res["runs"]}
    assert set(runs) == {"trl", "sync"}
    for r in runs.values():
        assert r["steps"] >= 1 and r["train_s"] > 3.0 and r["samples_per_s"] > 0  # (asyncopd: its last update)
        assert r["curve"][0] == [0.0, res["start_accuracy"]] and len(r["curve"]) >= 2
        assert all(0.0 <= a <= 1.0 for _, a in r["curve"])
    assert runs["trl"]["generate_s"] > 0 and runs["trl"]["steps"] * 16 == runs["trl"]["samples"]
    assert (tmp_path / "peers.png").is_file()
    assert {row["trainer"] for row in res["summary"]["forward_kl"]} == {"trl", "sync"}
