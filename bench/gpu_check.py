"""GPU validation in one command: environment, roofline against measurement, simulated against real.

    PYTHONPATH=. python bench/gpu_check.py [--budget 420] [--out DIR]      # on the GPU machine
    PYTHONPATH=. python bench/gpu_check.py --device cpu --tiny --budget 60  # the test suite's run

Phases, each with a share of ``--budget`` (seconds, wall clock), in this order:

1. ``env``: torch, CUDA, driver, GPU name and memory, library versions -> ``env.json``;
2. ``roofline-builtin`` and ``roofline-mid``: micro-benchmarks of the torch engines the actors use
   (``calibration/profilers``: decode step over batch x KV length, prefill, teacher top-k
   scoring, learner step) for the built-in models and for a mid-size transformer with random
   weights (Qwen3-0.6B's shape in bf16; ``--tiny``: a small one), each point beside the analytic
   model's prediction for the detected hardware preset (``calibration/roofline.py``) ->
   ``roofline-*/points.json, roofline.csv, profile.yaml``;
3. ``sim-vs-real``: every role on device 0 (fractional Ray GPUs on a GPU), a short calibration
   run of the real trainer on the built-in task, ``calibrate --from-run``, then for ``sync`` and
   ``fully_async(eta=2)``: the simulator's prediction *first*, the real run, and ``compare``'s
   report and plots -> ``sim-vs-real/``.

A phase that cannot start within what is left of the budget is skipped, one that fails is
recorded with its error, and the run goes on; ``summary.json`` (rewritten after every phase)
says what ran. Every phase prints a progress line (flushed, also in ``progress.log``), so a run
cut off from outside still leaves its finished phases on disk. Needs only torch, transformers,
ray, simpy, pydantic, numpy, scipy, pandas, matplotlib, seaborn, pyyaml, typer, rich, tqdm.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

LIBRARIES = ("torch", "transformers", "ray", "simpy", "pydantic", "numpy", "scipy", "pandas", "matplotlib",
             "seaborn", "yaml", "typer", "rich", "tqdm")
SHARES = {"roofline-builtin": 0.15, "roofline-mid": 0.3, "sim-vs-real": 0.55}


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "device": device,
                           "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
                           "libraries": {}}
    for lib in LIBRARIES:
        try:
            env["libraries"][lib] = getattr(importlib.import_module(lib), "__version__", "?")
        except ImportError:
            env["libraries"][lib] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", gpu_count=torch.cuda.device_count(),
                   driver=_driver_version())
    return env


def _driver_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


class Run:
    """The output directory, the clock and the summary, written after every phase."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        self.summary: dict[str, Any] = {"budget_s": budget_s, "phases": {}, "started": time.strftime("%Y-%m-%d %H:%M")}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def log(self, line: str) -> None:
        line = f"[{time.perf_counter() - self.t0:6.1f} s] {line}"
        print(line, flush=True)
        with (self.out / "progress.log").open("a") as f:
            f.write(line + "\n")

    def phase(self, name: str, budget_s: float, minimum_s: float, fn: Callable[[float], Any]) -> None:
        budget_s = min(budget_s, self.left())
        if budget_s < minimum_s:
            self.summary["phases"][name] = {"status": "skipped", "reason": f"{budget_s:.0f} s left, needs {minimum_s:.0f}"}
            self.log(f"{name}: skipped ({budget_s:.0f} s left, needs {minimum_s:.0f})")
        else:
            self.log(f"{name}: start (budget {budget_s:.0f} s)")
            t = time.perf_counter()
            try:
                result = fn(budget_s)
                self.summary["phases"][name] = {"status": "ran", "seconds": round(time.perf_counter() - t, 1)}
                self.summary[name] = result
                self.log(f"{name}: done in {time.perf_counter() - t:.0f} s")
            except Exception as e:  # recorded, and the next phase still runs
                self.summary["phases"][name] = {"status": "failed", "seconds": round(time.perf_counter() - t, 1),
                                                "error": f"{type(e).__name__}: {e}"}
                (self.out / f"{name}.error.txt").write_text(traceback.format_exc())
                self.log(f"{name}: FAILED: {type(e).__name__}: {e}")
        self.write()

    def write(self) -> None:
        self.summary["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole check")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default runs/gpu-check-TIME)")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tiny", action="store_true", help="small models and runs (the test suite's CPU check)")
    args = ap.parse_args(argv)

    import torch

    from asyncopd.config import load_config
    from asyncopd.runtime.setup import ResolvedModels, resolve_models
    from calibration.roofline import hardware_preset
    from gpu_phases import SyntheticCodec, microbench, mid_size_desc, sim_vs_real, write_random_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    run = Run(args.out or ROOT / "runs" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", args.budget)
    env = environment(device)
    (run.out / "env.json").write_text(json.dumps(env, indent=2))
    preset = hardware_preset(env.get("gpu") if device == "cuda" else None)
    run.summary.update(device=device, gpu=env.get("gpu"), hardware_preset=preset, tiny=args.tiny)
    run.log(f"env: {env.get('gpu') or 'CPU'} ({device}), torch {env['libraries']['torch']}, preset {preset}")
    run.write()

    placed = [f"cluster.device_type={device}", f"cluster.hardware={preset or 'cpu'}"]
    if device == "cuda":
        placed += ["cluster.num_devices=1", "layout.rollout.devices=[0]", "layout.teacher.devices=[0]",
                   "layout.learner.devices=[0]"]
    small = ["rollout.max_num_seqs=4", "learner.batch_size=8", "learner.micro_batch_size=4"] if args.tiny else []
    minimum = 5.0 if args.tiny else 30.0

    def builtin(budget: float) -> Any:
        cfg = load_config(str(ROOT / "configs/default.yaml"), [*placed, *small])
        return microbench(cfg, resolve_models(cfg, progress=False), budget, run.out / "roofline-builtin", preset,
                          ("decode", "prefill", "teacher", "learner"))

    def mid(budget: float) -> Any:
        desc = mid_size_desc(args.tiny)
        dtype = "float32" if device == "cpu" else "bfloat16"
        path = write_random_model(desc, run.out / "models" / desc.name, dtype)
        cfg = load_config(str(ROOT / "configs/default.yaml"), [
            *placed, f"models.student={path}", f"models.teacher={path}", f"models.dtype={dtype}",
            "sim.prompt_tokens_mean=" + ("32" if args.tiny else "512"),
            "rollout.max_num_seqs=" + ("4" if args.tiny else "64"), "rollout.max_new_tokens=64",
            "learner.batch_size=" + ("4" if args.tiny else "16"), "learner.micro_batch_size=4"])
        models = ResolvedModels(path, path, SyntheticCodec(desc.vocab_size))
        return {"model": desc.name, **microbench(cfg, models, budget, run.out / "roofline-mid", preset,
                                                 ("decode", "prefill", "teacher", "learner"))}

    def simreal(budget: float) -> Any:
        steps = (4, 4) if args.tiny else (300, 150)
        return sim_vs_real([*placed, *small], budget, run.out / "sim-vs-real", steps=steps[0],
                           calibration_steps=steps[1], policies=("sync", "fully_async(eta=2)"), log=run.log)

    run.phase("roofline-builtin", args.budget * SHARES["roofline-builtin"], minimum, builtin)
    run.phase("roofline-mid", args.budget * SHARES["roofline-mid"], minimum, mid)
    run.phase("sim-vs-real", run.left(), minimum, simreal)
    ran = [n for n, p in run.summary["phases"].items() if p["status"] == "ran"]
    run.log(f"finished in {run.summary['elapsed_s']:.0f} s: ran {', '.join(ran) or 'nothing'}; "
            f"summary {run.out / 'summary.json'}")
    print(table(run.summary), flush=True)
    return 0 if ran else 1


def table(summary: dict[str, Any]) -> str:
    """The results as Markdown: measured / predicted per stage and model, simulated vs real per policy."""
    lines = [f"GPU check {summary.get('started')}: {summary.get('gpu') or 'CPU'} (preset {summary.get('hardware_preset')})",
             "", "| model | stage | points | measured / roofline (median, min-max) |", "|---|---|---:|---|"]
    for phase in ("roofline-builtin", "roofline-mid"):
        ratios = (summary.get(phase) or {}).get("roofline") or {}
        for stage, r in ratios.items():
            lines.append(f"| {phase.split('-')[1]} | {stage} | {r['n']} | {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) |")
    lines += ["", "| policy | predicted samples/s | measured | error | staleness sim / real | KS |", "|---|---:|---:|---:|---|---:|"]
    for policy, r in (summary.get("sim-vs-real") or {}).items():
        if "skipped" in r:
            lines.append(f"| {policy} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(f"| {policy} | {r['predicted_samples_per_s']:.1f} | {r['measured_samples_per_s']:.1f} | "
                     f"{r['throughput_error']:+.1%} | {r['staleness_mean_sim']:.2f} / {r['staleness_mean_real']:.2f} | "
                     f"{r['staleness_ks']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
