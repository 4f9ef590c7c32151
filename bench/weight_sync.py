"""Weight-sync seconds against model size, for both ``sync.method``s, with the simulator's sync
model fitted beside them.

The trainer's own actors do the work: a ``LearnerWorker`` publishes its current version (as
after every update: ``object_store`` puts a state-dict copy in Ray's object store;
``collective`` packs a bucketed snapshot) and a ``RolloutWorker`` takes it (``load_weights``,
or ``receive_weights`` while the learner's ``serve_weights`` broadcasts through their gloo
group) and loads it into its engine. Models: the built-in student and two random-initialised
Llama configs (about 23M and 110M parameters, fp32). The methods alternate (A B A B) so that
the host's drift hits both alike.

Columns: ``publish`` (learner side), ``transfer`` (the worker receives; generation would go
on), ``pause`` (the load that stops generation), ``sync`` (all three: what a sync costs end
to end). The simulator's parametric sync model is ``t = sync_fixed_s + bytes / sync_bytes_per_s``
(+ ``ceil(bytes / bucket) * sync_bucket_latency_s`` for ``collective``; ``sim/parametric.py``): its
two free terms are fitted here by least squares to each method's medians, the ``fitted s`` column
is the simulator's own ``sync()`` with them, and ``fit err`` is its error per size (target: within
20%; fitted on relative errors).

    python bench/weight_sync.py [--repeats 5] [--bucket-mb 64] [--sizes student,23m,110m] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {  # name -> LlamaConfig keywords (vocab 32000, tied embeddings)
    "23m": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                num_key_value_heads=6),
    "110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12),
}


def model_dir(name: str, root: Path) -> tuple[Path, int]:
    """A checkpoint directory for ``name`` and its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if name == "student":
        from asyncopd.models import resolve_model
        from asyncopd.task.config import TaskConfig

        path = resolve_model("builtin-student", TaskConfig(), progress=False)
    else:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, tie_word_embeddings=True, **SIZES[name]))
        path = root / name
        model.save_pretrained(path)
    from transformers import AutoConfig

    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).parameters())
    return path, params


def measure(name: str, path: Path, params: int, repeats: int, bucket_bytes: int) -> list[dict]:
    import ray

    from asyncopd.runtime import actors
    from asyncopd.runtime.learner_actor import LearnerWorker

    rollout_opts = dict(eos_id=1, pad_id=0, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    learner_opts = dict(device_type="cpu", devices=[1], lr=1e-3, weight_decay=0.0, grad_clip=1.0, micro_batch_size=1,
                        warmup_steps=0, dtype="float32", sync_bucket_bytes=bucket_bytes)
    Learner = ray.remote(LearnerWorker).options(num_cpus=0, max_concurrency=3)
    Rollout = ray.remote(actors.RolloutWorker).options(num_cpus=0, max_concurrency=4)
    learners = {m: Learner.remote(str(path), sync_method=m, **learner_opts) for m in ("object_store", "collective")}
    rollout = Rollout.remote("rollout-0", str(path), device_type="cpu", devices=[0], dtype="float32", **rollout_opts)
    ray.get(rollout.ready.remote())  # (a worker answers work calls once taken on)
    fingerprint = ray.get(learners["collective"].weight_layout.remote())
    address = ray.get(learners["collective"].open_weight_channel.remote("rollout-0", 120))
    ray.get([learners["collective"].join_weight_channel.remote("rollout-0", "gloo", 120),
             rollout.join_weight_channel.remote(address, "gloo", 120, bucket_bytes, fingerprint, False)])
    rows = []
    for r in range(repeats + 1):  # (the first round warms both paths up and is not counted)
        for method in (("object_store", "collective") if r % 2 else ("collective", "object_store")):
            published = ray.get(learners[method].publish.remote())
            if method == "object_store":
                answer = ray.get(rollout.load_weights.remote(published["holder"], 0, "keep"))
            else:
                _, answer = ray.get([learners[method].serve_weights.remote("rollout-0", 0),
                                     rollout.receive_weights.remote(0, "keep")])
            started, ended, paused, _ = answer
            if r:
                total = ended - started
                rows.append({"model": name, "params": params, "bytes": 4 * params, "method": method,
                             "publish_s": published["seconds"], "transfer_s": total - (paused or 0.0),
                             "pause_s": paused or 0.0, "sync_s": published["seconds"] + total})
    for h in [*learners.values(), rollout]:
        ray.kill(h)
    return rows


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """``t = a + bytes * b``, both >= 0, minimising the squared *relative* errors (sizes span
    three orders of magnitude); returns (a, 1 / b)."""
    from scipy.optimize import nnls

    x = np.array([[1.0 / t, b / t] for b, t in points])
    (a, b), _ = nnls(x, np.ones(len(points)))
    return float(a), (1.0 / b if b > 0 else float("inf"))


def simulated_sync_s(method: str, nbytes: float, bucket_mb: float, fixed_s: float, bytes_per_s: float) -> float:
    """The simulator's sync pause (``sim/parametric.py``) for a model of ``nbytes`` with these terms."""
    from asyncopd.config import load_config
    from sim.parametric import ParametricCosts

    cfg = load_config(None, [f"sync.method={method}", f"sync.bucket_mb={bucket_mb}", f"sim.costs.model_bytes={nbytes}",
                             f"sim.costs.sync_fixed_s={fixed_s}",
                             f"sim.costs.sync_bytes_per_s={bytes_per_s if bytes_per_s < float('inf') else 1e30}"])
    return ParametricCosts.from_config(cfg).sync().pause_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bucket-mb", type=float, default=64.0)
    ap.add_argument("--sizes", default="student,23m,110m")
    ap.add_argument("--out", type=Path, default=None, help="write weight_sync.json here")
    args = ap.parse_args()
    import ray

    from host_load import reference_loop_s  # (bench/ is on sys.path when run as a script)

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    rows: list[dict] = []
    ref = [reference_loop_s()]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            path, params = model_dir(name, Path(tmp))
            t0 = time.perf_counter()
            rows += measure(name, path, params, args.repeats, int(args.bucket_mb * 2**20))
            print(f"measured {name} ({params / 1e6:.2f}M parameters) in {time.perf_counter() - t0:.0f} s", flush=True)
    ref.append(reference_loop_s())
    ray.shutdown()

    med: dict[tuple[str, str], dict] = {}
    for (name, method) in sorted({(r["model"], r["method"]) for r in rows}, key=lambda k: (k[1], k[0])):
        sel = [r for r in rows if r["model"] == name and r["method"] == method]
        med[name, method] = {k: statistics.median(r[k] for r in sel) for k in
                             ("publish_s", "transfer_s", "pause_s", "sync_s")} | {"bytes": sel[0]["bytes"],
                                                                                   "params": sel[0]["params"]}
    fits = {}
    for method in ("object_store", "collective"):
        # the simulator's own bucket term is known (sim.costs.sync_bucket_latency_s): fit the rest
        pts = [(m["bytes"], m["sync_s"] - simulated_sync_s(method, m["bytes"], args.bucket_mb, 0.0, float("inf")))
               for (n, mm), m in med.items() if mm == method]
        fixed, bw = fit(pts)
        fits[method] = {"sync_fixed_s": fixed, "sync_bytes_per_s": bw}
        for (n, mm), m in med.items():
            if mm == method:
                m["fitted_s"] = simulated_sync_s(method, m["bytes"], args.bucket_mb, fixed, bw)
                m["fit_error"] = m["fitted_s"] / m["sync_s"] - 1
    print(f"\nweight sync, fp32, bucket {args.bucket_mb:g} MB, median of {args.repeats} (A B alternating); "
          f"host yardstick {ref[0]:.2f} / {ref[1]:.2f} s (about 0.42 on a quiet host)")
    print(f"{'method':<13}{'model':<9}{'params':>9}{'MB':>8}{'publish s':>11}{'transfer s':>12}{'pause s':>9}"
          f"{'sync s':>9}{'fitted s':>10}{'fit err':>9}")
    for (name, method), m in med.items():
        print(f"{method:<13}{name:<9}{m['params'] / 1e6:>8.2f}M{m['bytes'] / 1e6:>8.1f}{m['publish_s']:>11.4f}"
              f"{m['transfer_s']:>12.4f}{m['pause_s']:>9.4f}{m['sync_s']:>9.4f}{m['fitted_s']:>10.4f}"
              f"{m['fit_error']:>+9.1%}")
    for method, f in fits.items():
        print(f"fitted {method}: sync_fixed_s = {f['sync_fixed_s']:.4f}, sync_bytes_per_s = {f['sync_bytes_per_s']:.3g}")
    names = sorted({n for n, _ in med})
    for n in names:
        if (n, "object_store") in med and (n, "collective") in med:
            ratio = med[n, "collective"]["sync_s"] / med[n, "object_store"]["sync_s"]
            print(f"{n}: collective / object_store sync time = {ratio:.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "weight_sync.json").write_text(json.dumps(
            {"rows": rows, "medians": [{"model": n, "method": m, **v} for (n, m), v in med.items()], "fits": fits,
             "host_yardstick_s": ref}, indent=2))


if __name__ == "__main__":
    main()
