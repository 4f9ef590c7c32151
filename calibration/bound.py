"""The pipeline's bound, measured: each stage's real work alone on its devices.

``asyncopd bound CONFIG`` builds the engines the trainer's actors build (``profilers/bench.py``),
pins this process as each role's first worker pins itself, and times that role's work with
nothing else running, for ``window_s`` seconds each:

- rollout: ``generate`` waves of ``rollout.max_num_seqs`` real task prompts (train split, in
  order), the student sampling with the config's temperature and stopping at EOS, as in a run;
  ``c_rollout`` = wave seconds / samples of the wave. Under ``rollout.batching: continuous`` a
  stream of ``8 * max_num_seqs`` prompts served continuously (``TorchRolloutEngine.serve``,
  joining as slots free) is the unit instead;
- teacher: ``score`` of ``min(teacher.max_batch_samples, learner.batch_size)`` of those rollouts
  (the largest batch the config lets it form); ``c_teacher`` = seconds / samples;
- learner: ``train_step`` on ``learner.batch_size / ranks`` scored rollouts (one data-parallel
  rank's shard); ``c_learner`` = seconds / ``learner.batch_size``;
- sync: a rollout worker's weight load (``set_weights``), paid once per version by every
  rollout worker: ``pause_s / learner.batch_size`` per sample.

These give each worker's work per consumed sample (``W_r`` workers of role ``r`` share its
samples), ``c_w = c_r / W_r`` (plus the weight loads on rollout workers), and the bound
``X = 1 / max_d sum_{w on d} c_w`` of ``asyncopd/trace/efficiency.py``, the same formula a run's
summary applies to the work it measured. What this leaves out, on purpose: the driver, Ray's
calls and the learner's publishing (work nobody's stage needs), and waves that run short of
``max_num_seqs`` prompts. Workers of a role are assumed to cost what its first one costs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from asyncopd.backends.base import GenRequest, RequestList, TrainItem, WeightUpdate
from asyncopd.config.placement import placement
from asyncopd.task import BuiltinTask
from asyncopd.trace.efficiency import bound_of, run_efficiency, with_measured_bound
from asyncopd.trace.schema import read_json


def _timed(fn: Callable[[], Any], window_s: float, min_units: int = 3) -> tuple[float, float, Any]:
    """Run ``fn`` (after one warm-up call) until ``window_s`` passed and at least ``min_units``
    calls were made; return mean wall and mean thread-CPU seconds per call, and the last result."""
    out = fn()
    walls, cpus = [], []
    t_end = time.perf_counter() + window_s
    while time.perf_counter() < t_end or len(walls) < min_units:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    return sum(walls) / len(walls), sum(cpus) / len(cpus), out


def _rollout_engine(bench: Any) -> Any:
    """The student engine as ``RolloutWorker`` builds it in a run: EOS on."""
    from asyncopd.backends.factory import build_rollout_engine  # (lazy: torch)

    cfg, algo, codec = bench.cfg, bench.cfg.algorithm, bench.codec
    return bench._build_as("rollout", lambda device: build_rollout_engine(
        "torch", str(bench.models.student), device=device, dtype=cfg.models.dtype, eos_id=codec.eos_id,
        pad_id=codec.pad_id, max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, seed=cfg.run.seed * 1000, capture_top_k=algo.rollout_top_k(),
        capture_mc=algo.rollout_mc_samples()))


def _task_requests(cfg: Any, codec: Any, n: int, start: int) -> list[Any]:
    task = BuiltinTask(cfg.task, seed=cfg.run.seed)
    return [GenRequest(start + i, p.prompt_id, codec.encode_prompt(p.prompt_text))
            for i, p in enumerate(task.problems(n, "train", start=start))]


def measure_stages(cfg: Any, models: Any, *, window_s: float = 3.0, progress: bool = True) -> dict[str, Any]:
    """Time each stage alone (module docstring); per-sample seconds and what they were measured on."""
    from calibration.profilers.bench import Bench  # (lazy: torch)

    bench = Bench(cfg, models, seed=cfg.run.seed)
    B, n = cfg.learner.batch_size, cfg.rollout.max_num_seqs
    ranks = len(cfg.layout.learner.devices)  # (one data-parallel rank per learner device: runtime/setup.py)
    continuous = cfg.rollout.batching == "continuous"
    bar = tqdm(total=4, desc="bound", unit="stage", disable=not progress)
    try:
        bench.place("rollout")
        engine = _rollout_engine(bench)
        waves = iter(range(10**9))
        results: list[Any] = []
        if continuous:  # a stream of 8 batches' worth per call, joined as slots free
            n *= 8

        def wave() -> list[Any]:
            requests = _task_requests(cfg, bench.codec, n, next(waves) * n)
            if not continuous:
                out = engine.generate(requests)
            else:
                out = []
                engine.serve(RequestList(requests), out.extend, slots=cfg.rollout.max_num_seqs,
                             min_join=cfg.rollout.join_at())
            results.extend(out)
            return out

        wave_s, wave_cpu, _ = _timed(wave, window_s)
        pool = results[-max(B, n):]
        tokens = sum(len(r.response_ids) for r in results) / len(results)
        state = {k: v.detach().clone() for k, v in engine.state_dict().items()}
        pause_s, _, _ = _timed(lambda: engine.set_weights(WeightUpdate(engine.version, state)), min(window_s, 1.0))
        bar.update(2)

        bench.place("teacher")
        tb = min(cfg.teacher.max_batch_samples, B)
        gens = (pool * (tb // len(pool) + 1))[:tb]
        reqs = bench.score_requests(gens)
        score_s, score_cpu, payloads = _timed(lambda: bench.teacher.score(reqs), window_s)
        bar.update()

        bench.place("learner")
        learner = bench.learner(cfg.learner.micro_batch_size)
        shard = max(1, B // ranks)
        scored = list(zip(gens, payloads))
        items = [TrainItem(g.prompt_ids, g.response_ids, g.behaviour_logprobs, g.token_versions, p, g.capture)
                 for g, p in (scored * (shard // len(scored) + 1))[:shard]]
        train_s, train_cpu, _ = _timed(lambda: learner.train_step(items), window_s)
        bar.update()
    finally:
        bench.restore()
        bar.close()
    return {
        "rollout": {"s_per_sample": wave_s / n, "cpu_per_sample": wave_cpu / n,
                    "unit": f"generate {n} prompts" + (" (continuous)" if continuous else ""),
                    "unit_s": wave_s, "response_tokens_mean": tokens},
        "sync": {"s_per_sample": pause_s / B, "unit": "weight load on a rollout worker", "unit_s": pause_s},
        "teacher": {"s_per_sample": score_s / tb, "cpu_per_sample": score_cpu / tb, "unit": f"score {tb} rollouts",
                    "unit_s": score_s},
        "learner": {"s_per_sample": train_s / B, "cpu_per_sample": train_cpu / B,
                    "unit": f"train_step on {shard} rollouts" + (f" (one of {ranks} ranks)" if ranks > 1 else ""),
                    "unit_s": train_s},
        "window_s": window_s,
    }


def worker_work(stages: dict[str, Any], layout: Any) -> dict[str, float]:
    """Per consumed sample, each worker's seconds of work (module docstring)."""
    out = {}
    for worker in placement(layout):
        role = worker.rsplit("-", 1)[0]
        if role == "learner":
            out[worker] = stages["learner"]["s_per_sample"]
        else:
            out[worker] = stages[role]["s_per_sample"] / getattr(layout, role).workers
            if role == "rollout":
                out[worker] += stages["sync"]["s_per_sample"]
    return out


def measure_bound(cfg: Any, models: Any, *, window_s: float = 3.0, progress: bool = True) -> dict[str, Any]:
    """The stages alone, each worker's work and the bound (``samples_per_s``, busiest device)."""
    if cfg.rollout.backend != "torch" or cfg.teacher.backend != "torch":
        raise ValueError("asyncopd bound times the torch engines; set rollout.backend=torch and teacher.backend=torch")
    if window_s <= 0:
        raise ValueError(f"--window must be > 0 s, got {window_s:g}")
    stages = measure_stages(cfg, models, window_s=window_s, progress=progress)
    work = worker_work(stages, cfg.layout)
    b = bound_of(work, placement(cfg.layout))
    b.update(stages=stages, work_per_sample=work, source="each stage timed alone on its devices (asyncopd bound)")
    return b


def attach_to_run(run_dir: Any, b: dict[str, Any]) -> dict[str, Any]:
    """Store the measured bound in a run's ``summary.json`` (``efficiency.measured_bound``)."""
    path = Path(run_dir) / "summary.json"
    summary = read_json(path)
    if not summary.get("samples_consumed"):
        raise ValueError(f"{path}: the run consumed no samples; it has no efficiency")
    eff = summary.get("efficiency") or run_efficiency(run_dir)
    summary["efficiency"] = with_measured_bound(eff, summary["samples_per_s"], b)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def bound_table(b: dict[str, Any]) -> Any:
    """The stages and the bound as a rich table."""
    from rich.table import Table

    t = Table(title=f"pipeline bound: {b['samples_per_s']:.1f} samples/s "
                    f"(device {b['device']}: {', '.join(b['workers'])})", title_justify="left")
    for col in ("stage", "unit", "s per unit", "samples/s alone", "cpu share"):
        t.add_column(col, justify="left" if col in ("stage", "unit") else "right")
    for name, s in b["stages"].items():
        if not isinstance(s, dict):
            continue
        share = f"{s['cpu_per_sample'] / s['s_per_sample']:.0%}" if "cpu_per_sample" in s else ""
        t.add_row(name, s["unit"], f"{s['unit_s'] * 1e3:.2f} ms", f"{1 / s['s_per_sample']:.1f}", share)
    return t
