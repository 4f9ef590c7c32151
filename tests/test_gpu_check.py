"""``bench/gpu_check.py`` on CPU (``--device cpu --tiny``), so that it works the first time a GPU
appears: every output file is written, every number in the summary is finite, and the code it
runs imports nothing beyond the packages the GPU machine has (issue 14). Plus the roofline
comparison's own arithmetic."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

# What the GPU machine has (issue 14), the standard library, this repository; tokenizers and
# safetensors come with transformers, jsonschema with ray.
ALLOWED = {"torch", "transformers", "ray", "simpy", "pydantic", "numpy", "scipy", "pandas", "matplotlib", "seaborn",
           "yaml", "typer", "rich", "tqdm", "tokenizers", "safetensors", "jsonschema", "psutil",
           "asyncopd", "sim", "calibration", "bench", "gpu_phases", "host_load"}

@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    code = ("import json, runpy, sys\n"
            f"sys.argv = ['bench/gpu_check.py', '--device', 'cpu', '--tiny', '--budget', '50', '--out', {str(out)!r}]\n"
            "rc = 0\n"
            "try:\n    runpy.run_path('bench/gpu_check.py', run_name='__main__')\n"
            "except SystemExit as e:\n    rc = e.code\n"
            f"files = sorted({{getattr(m, '__file__', None) or '' for m in list(sys.modules.values())}})\n"
            f"print('LOADED' + json.dumps([f for f in files if f.startswith({str(ROOT)!r}) and '.venv' not in f]))\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # a plain checkout: no install needed
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.split("LOADED", 1)[1].splitlines()[0]) + [str(ROOT / "bench/gpu_check.py")]
    return out, proc.stdout, loaded


@pytest.mark.slow
def test_the_cpu_check_writes_every_output_with_finite_numbers(check_run):
    from gpu_phases import finite_numbers

    out, stdout, _ = check_run
    summary = json.loads((out / "summary.json").read_text())
    assert {n: p["status"] for n, p in summary["phases"].items()} == {
        "roofline-builtin": "ran", "roofline-mid": "ran", "sim-vs-real": "ran"}
    assert finite_numbers(summary)
    for phase in ("roofline-builtin", "roofline-mid"):
        assert {"decode", "prefill", "teacher", "learner"} <= set(summary[phase]["roofline"])
        for f in ("points.json", "roofline.csv", "profile.yaml"):
            assert (out / phase / f).is_file(), f
    ran = {p: r for p, r in summary["sim-vs-real"].items() if "skipped" not in r}
    assert "sync" in ran  # (a later policy may be skipped on a slow host: the budget is what it is for)
    for policy, r in ran.items():
        assert r["measured_samples_per_s"] > 0 and r["predicted_samples_per_s"] > 0
        name = policy.split("(")[0]
        assert (out / "sim-vs-real" / f"compare-{name}" / "report.md").is_file()
        assert (out / "sim-vs-real" / f"real-{name}" / "trace.json").is_file()
    for f in ("env.json", "progress.log", "sim-vs-real/profile.yaml"):
        assert (out / f).is_file(), f
    assert json.loads((out / "env.json").read_text())["libraries"]["torch"]
    assert "| policy | predicted samples/s |" in stdout  # the results table


@pytest.mark.slow
def test_the_check_imports_only_what_the_gpu_machine_has(check_run):
    """Every import statement (module level or inside a function) of every first-party module the
    check loaded names the standard library, this repository or an allowed package."""
    _, _, loaded = check_run
    assert any(f.endswith("gpu_phases.py") for f in loaded) and any(f.endswith("driver.py") for f in loaded)
    outside = set()
    for f in loaded:
        for node in ast.walk(ast.parse(Path(f).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            outside |= {n.split(".")[0] for n in names} - ALLOWED - set(sys.stdlib_module_names)
    assert not outside, outside


def test_the_roofline_ratio_is_measured_over_the_analytic_charge():
    from asyncopd.config import load_config
    from calibration.roofline import compare_points, hardware_preset, stage_ratios
    from sim.analytic import AnalyticCosts

    assert [hardware_preset(n) for n in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA B200", "Tesla T4", None)] == \
        ["h200", "h100-sxm", "b200", None, "cpu"]
    model = AnalyticCosts.from_config(load_config(None, ["models.student=qwen3-0.6b", "models.teacher=qwen3-1.7b",
                                                         "cluster.device_type=cuda", "cluster.hardware=h200",
                                                         "models.dtype=bfloat16"]))
    alpha, beta, gamma, _ = model.decode_segment(8, 1024)
    points = [{"stage": "decode", "n": 8, "kv": 1024, "seconds": 2 * (alpha + max(beta, gamma))},
              {"stage": "teacher", "tokens": 4096, "samples": 8, "seconds": model.teacher(4096, 8) / 2},
              {"stage": "sync", "bytes": 10, "seconds": 1.0}]
    rows = compare_points(model, points)
    assert [(r["stage"], round(r["ratio"], 12)) for r in rows] == [("decode", 2.0), ("teacher", 0.5)]
    assert stage_ratios(rows)["decode"] == {"n": 1, "median": 2.0, "min": 2.0, "max": 2.0}
