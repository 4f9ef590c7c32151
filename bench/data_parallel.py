"""One learner rank against two: samples/s, held-out accuracy, and the simulator's prediction.

Runs the built-in default (``configs/default.yaml``) with the learner on one device (``[1]``,
DP=1) and on both (``[0, 1]``, DP=2, gloo, one rank per core, sharing them with rollout and
teacher), alternating A B A B so that the host's drift hits both alike, at the same number of
updates. Beside each layout it prints the simulator's prediction for it (``sim.driver.simulate``
with the same config) and the prediction's error against the measured mean, twice: with the
config's costs, and calibrated on this host from the first DP=1 run (``calibrate --from-run``:
DP=1 is then in-sample, DP=2 a layout the calibration has not seen).

    python bench/data_parallel.py [--repeats 2] [--steps 1000] [--strategy ddp] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYOUTS = {"DP=1": "[1]", "DP=2": "[0, 1]"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--out", type=Path, default=None, help="write data_parallel.json here")
    args = ap.parse_args()

    from asyncopd.config import load_config
    from asyncopd.runtime.driver import train
    from sim.driver import simulate

    def config(devices: str):
        return load_config("configs/default.yaml", [f"run.total_steps={args.steps}", f"layout.learner.devices={devices}",
                                                     f"learner.strategy={args.strategy}"])

    from calibration.from_run import fit_run, write_profile
    from calibration.profile import profile_overrides

    measured: dict[str, list[dict]] = {k: [] for k in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name, devices in LAYOUTS.items():  # (A B A B)
                s = train(config(devices), Path(tmp) / f"{name}-{rep}", progress=False)
                measured[name].append({"samples_per_s": s["samples_per_s"], "accuracy": s["accuracy"],
                                       "accuracy_start": s["accuracy_start"], "ok": s["ok"]})
                print(f"{name} run {rep + 1}: {s['samples_per_s']:.1f} samples/s, accuracy "
                      f"{s['accuracy_start']:.1%} -> {s['accuracy']:.1%}", flush=True)
        profile = write_profile(fit_run(Path(tmp) / "DP=1-0"), Path(tmp) / "dp1-profile.yaml")
        calibrated = profile_overrides(profile)
    rows = []
    for name, devices in LAYOUTS.items():
        predicted = simulate(config(devices), None, progress=False)["samples_per_s"]
        fitted = simulate(load_config("configs/default.yaml", [
            f"run.total_steps={args.steps}", f"layout.learner.devices={devices}", f"learner.strategy={args.strategy}",
            *calibrated]), None, progress=False)["samples_per_s"]
        rate = statistics.mean(m["samples_per_s"] for m in measured[name])
        rows.append({"layout": name, "learner_devices": devices, "samples_per_s": rate,
                     "accuracy": statistics.mean(m["accuracy"] for m in measured[name]),
                     "predicted_samples_per_s": predicted, "prediction_error": predicted / rate - 1,
                     "calibrated_samples_per_s": fitted, "calibrated_error": fitted / rate - 1,
                     "runs": measured[name]})
    print(f"\n{'layout':8} {'samples/s':>10} {'accuracy':>9} {'predicted':>10} {'error':>8} "
          f"{'calibrated':>11} {'error':>8}")
    for r in rows:
        print(f"{r['layout']:8} {r['samples_per_s']:10.1f} {r['accuracy']:9.1%} {r['predicted_samples_per_s']:10.1f} "
              f"{r['prediction_error']:+8.1%} {r['calibrated_samples_per_s']:11.1f} {r['calibrated_error']:+8.1%}")
    one, two = rows
    print(f"DP=2 / DP=1 samples/s: {two['samples_per_s'] / one['samples_per_s']:.3f}; "
          f"accuracy difference {two['accuracy'] - one['accuracy']:+.1%} ({args.steps} updates, {args.strategy})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data_parallel.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
