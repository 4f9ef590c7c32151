"""The phases of ``bench/gpu_check.py`` after the environment: roofline against micro-benchmarks,
and simulated against real runs on one device. Each writes into its own folder of the output
directory as it goes and returns a small summary (numbers only, for ``summary.json``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from asyncopd.catalog import get_model
from asyncopd.catalog.model_desc import ModelDesc


@dataclass(frozen=True)
class SyntheticCodec:
    """Token-id facts for a random-weight model: it has no tokenizer, and the micro-benchmarks
    feed uniformly random ids (the cost of a forward pass does not depend on which ids)."""

    vocab_size: int
    pad_id: int = 0
    eos_id: Optional[int] = None


# A mid-size stand-in: Qwen3-0.6B's shape from the catalogue (random bf16 weights, no download);
# ``tiny`` shrinks it for the CPU run of the test suite.
MID_SIZE = "qwen3-0.6b"


def mid_size_desc(tiny: bool) -> ModelDesc:
    desc = get_model(MID_SIZE)
    if not tiny:
        return desc
    from dataclasses import replace

    return replace(desc, name="qwen3-tiny", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=2048)


def write_random_model(desc: ModelDesc, path: Path, dtype: str, seed: int = 0) -> Path:
    """A Hugging Face directory with ``desc``'s architecture (Qwen3 with q/k norms, else Llama)
    and random weights, in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    kw = dict(vocab_size=desc.vocab_size, hidden_size=desc.hidden_size, num_hidden_layers=desc.num_layers,
              num_attention_heads=desc.num_heads, num_key_value_heads=desc.num_kv_heads, head_dim=desc.head_dim,
              intermediate_size=desc.intermediate_size, tie_word_embeddings=desc.tie_embeddings,
              max_position_embeddings=desc.max_position_embeddings or 4096)
    config = Qwen3Config(**kw) if desc.qk_norm else LlamaConfig(**kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    return path


def microbench(cfg: Any, models: Any, budget_s: float, out: Path, preset: Optional[str],
               stages: tuple[str, ...]) -> dict[str, Any]:
    """Profile ``stages`` of ``cfg``'s torch engines within ``budget_s``; save the points, the fitted
    profile and, with a hardware ``preset``, the analytic model's prediction and ratio per point."""
    from calibration.fit import fit_points
    from calibration.profile import write_profile_dict
    from calibration.profilers import Bench, measure_plans, plan_all
    from calibration.roofline import compare_points, stage_ratios
    from sim.analytic import AnalyticCosts

    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(cfg, models, seed=cfg.run.seed)
    try:
        points = measure_plans(bench, plan_all(bench, stages), budget_s, progress=False)
    finally:
        bench.restore()
    (out / "points.json").write_text(json.dumps(points, indent=1))
    fit = fit_points(points, top_k=cfg.teacher.top_k, micro_batch_size=cfg.learner.micro_batch_size)
    write_profile_dict({"source": "gpu_check", "sim": {"costs": {**cfg.sim.costs.model_dump(),
                                                                  **fit.costs(0.0, cfg.sim.costs.dispatch_s)}},
                        "fit": {k: {"params": v.params, "mape": v.mape, "n": v.n} for k, v in fit.stages.items()}},
                       out / "profile.yaml")
    summary: dict[str, Any] = {"points": len(points), "fit_mape": {k: v.mape for k, v in fit.stages.items()}}
    if preset is None:
        summary["roofline"] = None
        return summary
    analytic = AnalyticCosts.from_config(cfg.model_copy(update={"cluster": cfg.cluster.model_copy(
        update={"hardware": preset})}))
    rows = compare_points(analytic, points)
    with (out / "roofline.csv").open("w") as f:
        f.write("stage,n,kv,tokens,samples,measured_s,predicted_s,ratio\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in ("stage", "n", "kv", "tokens", "samples")) +
                    f",{r['seconds']:.6g},{r['predicted_s']:.6g},{r['ratio']:.4g}\n")
    summary["roofline"] = stage_ratios(rows)
    return summary


def sim_vs_real(base: list[str], budget_s: float, out: Path, *, steps: int, calibration_steps: int,
                policies: tuple[str, ...], log: Any) -> dict[str, Any]:
    """Calibrate on a short real run, predict each policy with the simulator *before* running it,
    run it, compare (``asyncopd compare``'s report and plots per policy). ``base``: config overrides."""
    from asyncopd.config import load_config

    import ray

    from asyncopd.runtime.setup import start_ray

    t_end = time.perf_counter() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    share = budget_s / (1 + 1.2 * len(policies))  # the calibration run, then each policy's real run (+ sim)
    cal = load_config("configs/default.yaml", [*base, f"run.total_steps={calibration_steps}",
                                               f"run.time_budget_s={share}"])
    started = start_ray(cal)  # (one Ray for the three runs)
    try:
        return _calibrate_predict_run(cal, base, out, t_end, share, steps, policies, log)
    finally:
        if started:
            ray.shutdown()


def _calibrate_predict_run(cal: Any, base: list[str], out: Path, t_end: float, share: float, steps: int,
                           policies: tuple[str, ...], log: Any) -> dict[str, Any]:
    from asyncopd.config import load_config
    from asyncopd.runtime.driver import train
    from asyncopd.trace.compare import compare_runs
    from calibration.fidelity import calibrate_by_run
    from calibration.profile import profile_overrides
    from sim.driver import simulate

    log(f"sim-vs-real: calibration run ({cal.run.total_steps} updates, at most {share:.0f} s)")
    profile = calibrate_by_run(cal, out / "calibration", out / "profile.yaml")
    costs = profile_overrides(profile)
    results: dict[str, Any] = {}
    for policy in policies:
        left = t_end - time.perf_counter()
        if left < share * 0.5:
            results[policy] = {"skipped": f"{left:.0f} s left of the phase's budget"}
            log(f"sim-vs-real: {policy} skipped ({left:.0f} s left)")
            continue
        name = policy.split("(")[0]
        cfg = load_config("configs/default.yaml", [*base, *costs, f"pipeline.policy={policy}",
                                                   f"run.total_steps={steps}", f"run.time_budget_s={left / 1.2:.0f}"])
        sim = simulate(cfg, out / f"sim-{name}", progress=False)  # the prediction, before the run
        log(f"sim-vs-real: {policy} predicted {sim['samples_per_s']:.1f} samples/s; running it")
        real = train(cfg, out / f"real-{name}", progress=False, evaluate=False)
        cmp = compare_runs(out / f"real-{name}", out / f"sim-{name}", out / f"compare-{name}")
        results[policy] = {
            "predicted_samples_per_s": sim["samples_per_s"], "measured_samples_per_s": real["samples_per_s"],
            "throughput_error": sim["samples_per_s"] / real["samples_per_s"] - 1,
            "steps_measured": real["steps"], "staleness_mean_sim": cmp["staleness_mean"]["sim"],
            "staleness_mean_real": cmp["staleness_mean"]["real"], "staleness_ks": cmp["staleness_ks"],
            "utilisation_real": cmp["utilisation"]["real"], "utilisation_sim": cmp["utilisation"]["sim"]}
        log(f"sim-vs-real: {policy} measured {real['samples_per_s']:.1f} samples/s "
            f"(error {results[policy]['throughput_error']:+.1%})")
    return results


def finite_numbers(tree: Any) -> bool:
    """Every number in a JSON-like tree is finite (what the CPU test checks of ``summary.json``)."""
    if isinstance(tree, dict):
        return all(finite_numbers(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(finite_numbers(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    return True
