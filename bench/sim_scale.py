"""Simulator speed: 200 learner steps x 256 samples, lognormal lengths up to 16K tokens, a
64-GPU H100 layout (Qwen3-1.7B student, Qwen3-30B-A3B teacher), analytic costs, continuous
batching. Prints wall seconds and simulated-time / wall-time, in memory and writing a run
directory. Target (issue 3): < 5 s wall on 2 cores.

    python bench/sim_scale.py [--steps 200] [--batch 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from asyncopd.config import load_config
from sim.driver import simulate
from host_load import reference_loop_s  # (bench/ is on sys.path when run as a script)


def layout_64(steps: int, batch: int, policy: str) -> list[str]:
    return [
        f"run.total_steps={steps}", f"learner.batch_size={batch}", "learner.micro_batch_size=16",
        "models.student=qwen3-1.7b", "models.teacher=qwen3-30b-a3b", "models.dtype=bfloat16",
        "rollout.backend=vllm", "rollout.max_num_seqs=64", "rollout.max_new_tokens=16384",
        "teacher.backend=vllm", "teacher.top_k=32", "teacher.max_batch_samples=64", "teacher.min_batch_samples=16",
        "layout.rollout={workers: 48, devices: [" + ",".join(map(str, range(48))) + "], tp: 1}",
        "layout.teacher={workers: 4, devices: [48,49,50,51,52,53,54,55], tp: 2}",
        "layout.learner={workers: 1, devices: [56,57,58,59,60,61,62,63], tp: 1}",
        "cluster={device_type: cuda, num_devices: 64, hardware: h100-sxm}",
        "sim.cost_model=analytic", "sim.prompt_tokens_mean=512",
        "sim.response_length={kind: lognormal, mean: 4000, cv: 1.0, max: 16384}",
        f"pipeline.policy={policy}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--policy", default="fully_async(eta=4)")
    ap.add_argument("--repeat", type=int, default=5, help="report the best of this many runs")
    args = ap.parse_args()
    cfg = load_config(None, layout_64(args.steps, args.batch, args.policy))
    rows = []
    for label, make_dir in (("in memory", lambda: None), ("run directory", lambda: tempfile.mkdtemp())):
        best = None
        for _ in range(args.repeat):  # best of N: the machine is shared and noisy
            ref = reference_loop_s()
            t0, c0 = time.perf_counter(), time.process_time()
            s = simulate(cfg, make_dir(), progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or wall < best[1]:
                best = (label, wall, cpu, s, ref)
        rows.append(best)
    print(f"{args.steps} steps x {args.batch} samples, 64 x H100, {args.policy} (best of {args.repeat})")
    print(f"{'mode':<15}{'wall s':>9}{'cpu s':>9}{'sim s':>11}{'sim/wall':>11}{'samples':>9}{'samples/s':>11}"
          f"{'ref loop s':>12}")
    for label, wall, cpu, s, ref in rows:
        print(f"{label:<15}{wall:>9.2f}{cpu:>9.2f}{s['duration_s']:>11.0f}{s['duration_s'] / wall:>11.0f}"
              f"{s['samples_consumed']:>9}{s['samples_per_s']:>11.2f}{ref:>12.3f}")
    print("(cpu s: this process's CPU time. ref loop s: a fixed Python loop timed just before that run,\n"
          " about 0.42 s on a quiet host; when it is higher, the host was busy and wall s scales with it)")


if __name__ == "__main__":
    main()
