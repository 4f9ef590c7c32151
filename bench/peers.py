"""asyncopd side by side with TRL (the peer a user would pick) on the built-in task.

    pip install -e '.[peers]'
    python bench/peers.py [--budget 60] [--seeds 0,1] [--losses forward_kl,reverse_kl]
                          [--async-policy 'fully_async(eta=2)'] [--every 10] [--out DIR] [--set a.b=c]

Three trainers, each for the same wall-clock training budget, runs interleaved (for each seed,
for each loss: TRL, asyncopd ``sync``, asyncopd's async policy):

- **TRL**: ``trl.DistillationTrainer`` (``bench/peers_trl.py``), the student samples every
  completion (fully on-policy), loss = generalised JSD with ``beta = 0``, forward
  ``KL(p_teacher || p_student)``, or ``beta = 1``, reverse ``KL(p_student || p_teacher)``, both
  over the full vocabulary at every completion token, token mean over the batch;
- **asyncopd sync** and **asyncopd async** (``--async-policy``): the real Ray trainer with
  ``forward_kl_topk`` / ``reverse_kl_topk`` (teacher top-k cache, ``teacher.top_k``).

The same for all three: the student and teacher checkpoints (the config's models, built once for
its ``run.seed``; the bench's seeds vary the prompts, sampling and data order, not the models),
batch size, learning rate (constant, no warm-up), AdamW (0.9, 0.999, no weight decay), gradient
clip, max new tokens, temperature, the loss family, the train prompts (the task's train split for
the seed, in id order), the generation width (asyncopd's rollout decodes the whole batch at once,
``rollout.max_num_seqs`` = batch size, as TRL's generate call does; with the config's 8 its rollout waves
cost 4.6 ms CPU per sample, with 16 2.9-3.1 ms) and the 2 CPU cores. asyncopd batches continuously
(``rollout.batching: continuous``: 1.9 ms CPU per sample at 16 slots alone; ``--set
rollout.batching=wave`` for waves) and its teacher scores at least half a batch at a time
(``teacher.min_batch_samples``; continuous rollouts deliver samples in small groups). The training clock starts once the models are loaded
(TRL: ``on_train_begin``; asyncopd: ``run.time_budget_s``'s clock, after its actors are up) and
stops at the first update boundary past the budget.

Accuracy over wall time: every ``--every`` updates each trainer saves its student (asyncopd:
``run.checkpoint_every``, the write on its clock; TRL: a callback, its clock paused), and after the
run each is evaluated with ``asyncopd.runtime.checkpoints.evaluate_checkpoint`` (what
``asyncopd eval`` runs): greedy exact match on the same held-out prompts (eval split, task seed
0) for every trainer and seed. A point's time is the training clock when its update finished.

Time to reach (``time_to_reach``): the target is TRL's final held-out accuracy ``a`` (per seed and
loss); a trainer's time is the clock of its first evaluated point with accuracy ``>= a`` (the
starting student is the point ``t = 0``), ``None`` if no point reaches it. The table shows the
mean over seeds (only when every seed reached it) and that time as a fraction of TRL's training
wall time (its clock at its last update). The question: is the async row's fraction ``<= 0.5``?

Where the time goes (``time_split``): TRL's wall time per sample, its generate call and the rest;
asyncopd's CPU seconds per sample on each core and the throughput bound they set.

Writes ``results.json`` (every run, every point) and ``peers.png`` (accuracy against training
seconds, one panel per loss) to ``--out`` (default: a new temporary directory, printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

TRL_MISSING = "bench/peers.py needs TRL: pip install -e '.[peers]'"
HERE = Path(__file__).resolve().parent
LOSSES: dict[str, dict[str, Any]] = {
    "forward_kl": {"beta": 0.0, "asyncopd": "forward_kl_topk"},
    "reverse_kl": {"beta": 1.0, "asyncopd": "reverse_kl_topk"},
}
TRAINERS = ("trl", "sync", "async")
EVAL_SEED = 0  # the held-out prompts: eval split of the task with this seed, for every run


def run_order(seeds: list[int], losses: list[str], trainers: tuple[str, ...] = TRAINERS) -> list[tuple[int, str, str]]:
    """(seed, loss, trainer) in the order the bench runs them: the trainers interleaved innermost."""
    return [(s, loss, t) for s in seeds for loss in losses for t in trainers]


def time_to_reach(curve: list[tuple[float, float]], target: float) -> Optional[float]:
    """Clock time of the first point of ``curve`` ((t, accuracy), any order) with accuracy >= target."""
    for t, acc in sorted(curve):
        if acc >= target - 1e-9:
            return t
    return None


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def summarize(runs: list[dict[str, Any]], trainers: tuple[str, ...] = TRAINERS) -> dict[str, list[dict[str, Any]]]:
    """Per loss, one row per trainer: means over seeds, and the time each needs to reach TRL's
    final accuracy of the same seed (also as a fraction of TRL's training wall time)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for loss in dict.fromkeys(r["loss"] for r in runs):
        trl = {r["seed"]: r for r in runs if r["loss"] == loss and r["trainer"] == "trl"}
        rows = []
        for name in trainers:
            mine = sorted((r for r in runs if r["loss"] == loss and r["trainer"] == name), key=lambda r: r["seed"])
            if not mine:
                continue
            reach, frac = {}, {}
            for r in mine:
                ref = trl.get(r["seed"])
                if ref is None:
                    continue
                t = time_to_reach(r["curve"], ref["curve"][-1][1])
                reach[r["seed"]] = t
                frac[r["seed"]] = None if t is None else t / ref["train_s"]
            all_reached = bool(reach) and all(v is not None for v in reach.values())
            rows.append({
                "trainer": name, "label": mine[0]["label"], "seeds": [r["seed"] for r in mine],
                "samples_per_s": _mean([r["samples_per_s"] for r in mine]),
                "steps": _mean([r["steps"] for r in mine]), "train_s": _mean([r["train_s"] for r in mine]),
                "cores": _mean([r["cpu_s"] / r["train_s"] for r in mine if r.get("cpu_s") and r["train_s"] > 0]),
                "final": [r["curve"][-1][1] for r in mine], "final_mean": _mean([r["curve"][-1][1] for r in mine]),
                "reach": reach, "reached": sum(v is not None for v in reach.values()),
                "reach_mean": _mean(list(reach.values())) if all_reached else None,
                "frac_mean": _mean(list(frac.values())) if all_reached else None,
            })
        out[loss] = rows
    return out


def _fmt_s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def render_table(loss: str, rows: list[dict[str, Any]], budget: float, notes: dict[str, str]) -> Table:
    """One rich table per loss: trainer, samples/s, steps, accuracy, time to TRL's final accuracy."""
    table = Table(title=f"{loss}: {budget:g} s of training per run (built-in task, 2-core CPU)", title_justify="left")
    for col in ("trainer", "seeds", "samples/s", "steps", "cores busy", "held-out acc. (per seed)",
                "s to TRL's final acc. (per seed)", "x TRL wall", "not like for like"):
        table.add_column(col, justify="left" if col in ("trainer", "seeds", "not like for like") else "right")
    for r in rows:
        per_seed = ", ".join(f"{a:.1%}" for a in r["final"])
        reach = ", ".join("never" if r["reach"].get(s) is None else f"{r['reach'][s]:.1f}" for s in r["seeds"])
        if r["reach_mean"] is not None:
            reach_cell, frac = f"{r['reach_mean']:.1f} ({reach})", f"{r['frac_mean']:.2f}"
        else:
            reach_cell, frac = f"not reached in {len(r['seeds']) - r['reached']}/{len(r['seeds'])} ({reach})", "-"
        table.add_row(r["label"], ",".join(map(str, r["seeds"])), f"{r['samples_per_s']:.1f}", f"{r['steps']:.0f}",
                      f"{r['cores']:.2f}", f"{r['final_mean']:.1%} ({per_seed})", reach_cell, frac,
                      notes.get(r["trainer"], ""))
    return table


def _rollout_shape(cfg: Any) -> tuple[int, str]:
    return cfg.rollout.max_num_seqs, cfg.rollout.batching


def footnotes(top_k: int, vocab: int, batch: int, async_policy: str, every: int,
              trl_threads: Optional[int] = 1, rollout_seqs: Optional[int] = None,
              batching: str = "wave") -> tuple[dict[str, str], list[str]]:
    """The table's "not like for like" cells, and the footnotes they refer to."""
    threads = f"{trl_threads} thread{'s' if trl_threads > 1 else ''}" if trl_threads else "one thread per core"
    cells = {"trl": "[1] full vocab, [2] 1 process", "sync": f"[1] top-{top_k}, [2] 3 actors, [4]",
             "async": f"[1] top-{top_k}, [2] 3 actors, [3] stale, [4]"}
    text = [
        f"[1] loss support: TRL scores all V={vocab} ids at every completion token; asyncopd the teacher's top-{top_k} "
        "from its score cache (forward KL: the truncated sum, not renormalised; reverse KL: the top-k plus one tail "
        f"bucket). They coincide at k=V: --set teacher.top_k={vocab}.",
        f"[2] processes: TRL is one process (torch on {threads}, --trl-threads) that generates, scores and trains "
        f"in turn, generating the whole batch of {batch} in one HF generate call; asyncopd runs rollout (core 0), "
        "teacher and learner (core 1) as pinned Ray actors with one torch thread each, plus an unpinned driver; its "
        f"rollout decodes up to {rollout_seqs or 'rollout.max_num_seqs'} sequences at once (the bench sets "
        "rollout.max_num_seqs to the batch size, as wide as TRL's generate call), "
        + ("batching continuously: a sequence that ends frees its slot for the next prompt, where HF generate "
           "decodes until the batch's longest completion ends; its teacher waits for half a batch "
           "(teacher.min_batch_samples) while generations are in flight. " if batching == "continuous" else
           "in waves that run until their longest sequence ends, as HF generate does. ")
        + "'cores busy': CPU seconds per "
        "training second, of 2; on a loaded host the scheduler shares the cores per thread, so asyncopd's three busy "
        "processes get more of them than TRL's one.",
        f"[3] {async_policy} trains on samples generated by weights up to a few versions old (results.json: "
        "staleness_mean); sync and TRL train on fresh samples only. Both draw the same train prompts in id order; "
        "async consumes them slightly out of order.",
        f"[4] asyncopd's clock includes writing its checkpoints (every {every} updates; results.json: checkpoint_s); "
        "TRL's clock is paused while it saves. Model loading and Ray start are off both clocks.",
    ]
    return cells, text


def plot(runs: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against training seconds: hue = trainer, line style = seed, one panel per loss; the
    dashed line is TRL's final accuracy (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([{"loss": r["loss"], "trainer": r["label"], "seed": r["seed"], "seconds": t, "accuracy": a}
                       for r in runs for t, a in r["curve"]])
    g = sns.relplot(data=df, x="seconds", y="accuracy", hue="trainer", style="seed", units="seed", estimator=None,
                    col="loss", kind="line", marker="o", markersize=3, height=3.6, aspect=1.3)
    for loss, ax in g.axes_dict.items():
        finals = [r["curve"][-1][1] for r in runs if r["loss"] == loss and r["trainer"] == "trl"]
        if finals:
            ax.axhline(_mean(finals), ls="--", lw=0.8, color="grey")
    g.set_axis_labels("training wall-clock seconds", "held-out accuracy (exact match)")
    g.savefig(path, dpi=120)
    return path


def time_split(runs: list[dict[str, Any]], label: str) -> Optional[str]:
    """Where one trainer's time went, per consumed sample (means over its runs): TRL's wall
    time split into its generate call and the rest (teacher and student forward, backward,
    optimizer); asyncopd's CPU seconds per sample on each core (``efficiency`` of the run
    summary) and the throughput bound they set, 1 / (the busiest core's seconds per sample)."""
    if not runs:
        return None
    if runs[0]["trainer"] == "trl":
        wall = _mean([r["train_s"] / r["samples"] for r in runs if r["samples"]])
        gen = _mean([r["generate_s"] / r["samples"] for r in runs if r["samples"]])
        return (f"{label}: {1e3 * wall:.2f} ms wall per sample: generate {1e3 * gen:.2f} ms, the rest (teacher and "
                f"student forward, backward, optimizer) {1e3 * (wall - gen):.2f} ms, all on one core")
    effs = [r["efficiency"] for r in runs if r.get("efficiency")]
    if not effs:
        return None
    cores = sorted({c for e in effs for c in e["device_s_per_sample"]})
    per = {c: _mean([e["device_s_per_sample"][c] for e in effs if c in e["device_s_per_sample"]]) for c in cores}
    bound = _mean([e["samples_per_s"] for e in effs])
    got = _mean([r["samples_per_s"] for r in runs])
    return (f"{label}: CPU per sample " + ", ".join(f"core {c} {1e3 * v:.2f} ms" for c, v in per.items())
            + f" -> at most {bound:.0f} samples/s; measured {got:.0f} ({got / bound:.0%} of that bound)")


# ------------------------------------------------------------------------------------- runs
def _snapshot_curve(snapshots: list[dict[str, Any]], start_acc: float) -> list[tuple[float, float]]:
    import torch

    from asyncopd.runtime.checkpoints import evaluate_checkpoint

    torch.set_num_threads(1)  # (off the clock; two threads stall for seconds whenever another process takes a core)

    curve = [(0.0, start_acc)]
    for s in sorted(snapshots, key=lambda s: s["t"]):
        curve.append((float(s["t"]), evaluate_checkpoint(s["path"], seed=EVAL_SEED)["accuracy"]))
    return curve


def run_asyncopd(cfg_path: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """One asyncopd run (``run.time_budget_s`` in ``overrides``); snapshots from its checkpoints,
    timed by the ``t_end`` of the update each was taken after (``log.jsonl``)."""
    from asyncopd.config import load_config
    from asyncopd.runtime.checkpoints import list_checkpoints
    from asyncopd.runtime.driver import train

    cfg = load_config(cfg_path, overrides)
    t0 = time.perf_counter()
    summary = train(cfg, out, progress=False, evaluate=False)
    total = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    t_end = {r["version"]: r["t_end"] for r in log}
    seen: dict[int, dict[str, Any]] = {}
    for c in list_checkpoints(out):  # (final after the step_* of its version: one point per version)
        if c.version in t_end:
            seen[c.version] = {"version": c.version, "t": t_end[c.version], "path": str(c.path)}
    train_s = log[-1]["t_end"] if log else 0.0
    samples = sum(r["samples"] for r in log)
    cpu = summary.get("unplaced_cpu") or {}
    return {"cpu_s": sum(cpu.get(k) or 0.0 for k in ("driver_s", "ray_system_s", "actors_s")) if cpu else None,
            "snapshots": list(seen.values()), "steps": len(log), "train_s": train_s, "samples": samples,
            "samples_per_s": samples / train_s if train_s > 0 else 0.0, "off_clock_s": total - train_s,
            "utilisation": summary.get("utilisation"), "staleness_mean": (summary.get("staleness") or {}).get("mean"),
            "checkpoint_s": sum(r.get("checkpoint_s") or 0.0 for r in log), "processes": "3 Ray actors + driver",
            "efficiency": summary.get("efficiency")}


def run_trl_subprocess(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """One TRL run in a fresh Python process (``bench/peers_trl.py``), its output in out/trl.log."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps({**spec, "out": str(out)}, default=str))
    threads = {"OMP_NUM_THREADS": str(spec["threads"])} if spec.get("threads") else {}
    env = {**os.environ, **threads, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(out / "trl.log", "w") as logf:
        rc = subprocess.call([sys.executable, str(HERE / "peers_trl.py"), str(out / "spec.json")], stdout=logf,
                             stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        tail = (out / "trl.log").read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"the TRL run failed (exit {rc}, log {out / 'trl.log'}): " + " | ".join(tail))
    r = json.loads((out / "result.json").read_text())
    r["off_clock_s"] = time.perf_counter() - t0 - r["train_s"]
    return r


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    ap.add_argument("--seeds", default="0,1", help="comma-separated run seeds (at least 2 for the issue's question)")
    ap.add_argument("--losses", default=",".join(LOSSES), help="comma-separated, from: " + ", ".join(LOSSES))
    ap.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated, from: " + ", ".join(TRAINERS)
                    + " (trl is the reference: the time-to-reach columns need it)")
    ap.add_argument("--async-policy", default="fully_async(eta=2)", help="asyncopd's async pipeline policy")
    ap.add_argument("--trl-threads", type=int, default=1, help="torch threads of the TRL process (0: torch's "
                    "default, one per core; see bench/peers_trl.py for why 1)")
    ap.add_argument("--every", type=int, default=10, help="save the student every N updates for the curve")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for asyncopd "
                    "(repeatable); batch size, lr, max new tokens, temperature and task reach TRL too")
    ap.add_argument("--out", type=Path, help="results directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    console = Console(width=max(150, Console().width))
    losses = [x for x in args.losses.split(",") if x]
    if unknown := [x for x in losses if x not in LOSSES]:
        ap.error(f"unknown loss(es) {unknown}; choose from {list(LOSSES)}")
    trainers = tuple(t for t in TRAINERS if t in args.trainers.split(","))
    if unknown := [x for x in args.trainers.split(",") if x and x not in TRAINERS]:
        ap.error(f"unknown trainer(s) {unknown}; choose from {list(TRAINERS)}")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x]
    except ValueError:
        ap.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if not seeds or args.budget <= 0 or args.every < 1:
        ap.error("need at least one seed, --budget > 0 and --every >= 1")
    if importlib.util.find_spec("trl") is None:
        print(TRL_MISSING, file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="asyncopd-peers-"))
    out.mkdir(parents=True, exist_ok=True)

    from asyncopd.config import load_config
    from asyncopd.runtime.checkpoints import evaluate_checkpoint
    from asyncopd.runtime.setup import resolve_models

    base = load_config(args.config, args.overrides)
    models = resolve_models(base, progress=True)
    start_acc = evaluate_checkpoint(models.student, seed=EVAL_SEED)["accuracy"]
    common = [f"models.student={models.student}", f"models.teacher={models.teacher}", "run.total_steps=100000",
              f"run.time_budget_s={args.budget}", f"run.checkpoint_every={args.every}", "run.keep_checkpoints=100000",
              "learner.lr_schedule=constant", "learner.warmup_steps=0", "learner.weight_decay=0",
              f"rollout.max_num_seqs={base.learner.batch_size}",  # (decode as wide as TRL's generate call)
              "rollout.batching=continuous",  # (asyncopd's faster rollout; --set rollout.batching=wave for waves)
              f"teacher.min_batch_samples={max(1, base.learner.batch_size // 2)}"]  # (scores in fuller batches)
    labels = {"trl": "TRL DistillationTrainer", "sync": "asyncopd sync", "async": f"asyncopd {args.async_policy}"}
    notes, notes_text = footnotes(base.teacher.top_k, models.codec.vocab_size, base.learner.batch_size,
                                  args.async_policy, args.every, args.trl_threads or None,
                                  *_rollout_shape(load_config(args.config, [*common, *args.overrides])))
    runs: list[dict[str, Any]] = []
    order = run_order(seeds, losses, trainers)
    console.print(f"starting student: {start_acc:.1%} held-out; {len(order)} runs of {args.budget:g} s; out: {out}")
    for i, (seed, loss, name) in enumerate(order, 1):
        run_dir = out / f"{loss}-seed{seed}-{name}"
        console.print(f"[{i}/{len(order)}] {labels[name]}, {loss}, seed {seed} ...")
        cfg = load_config(args.config, [*common, f"run.seed={seed}", *args.overrides])
        if name == "trl":
            spec = {"student_dir": str(models.student), "teacher_dir": str(models.teacher),
                    "beta": LOSSES[loss]["beta"], "seed": seed, "budget_s": args.budget, "every": args.every,
                    "batch_size": cfg.learner.batch_size, "lr": cfg.learner.lr,
                    "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature,
                    "task": cfg.task.model_dump(mode="json"), "threads": args.trl_threads or None}
            r = run_trl_subprocess(spec, run_dir)
        else:
            policy = "sync" if name == "sync" else args.async_policy
            r = run_asyncopd(args.config, [*common, f"run.seed={seed}", f"algorithm.loss={LOSSES[loss]['asyncopd']}",
                                           f"pipeline.policy={policy}", *args.overrides], run_dir)
        load = os.getloadavg()[0]  # (1-minute load average right after the run: the host is shared)
        r.update(trainer=name, label=labels[name], loss=loss, seed=seed, loadavg_1m=load,
                 curve=_snapshot_curve(r["snapshots"], start_acc))
        runs.append(r)
        console.print(f"  {r['steps']} updates in {r['train_s']:.1f} s ({r['samples_per_s']:.1f} samples/s), "
                      f"held-out {start_acc:.1%} -> {r['curve'][-1][1]:.1%}; host load {load:.1f}")
        (out / "results.json").write_text(json.dumps({"budget_s": args.budget, "start_accuracy": start_acc,
                                                      "runs": runs}, indent=1, default=str))
    summary = summarize(runs, trainers)
    for loss, rows in summary.items():
        console.print(render_table(loss, rows, args.budget, notes))
    for line in notes_text:
        console.print(line)
    off = {n: _mean([r["off_clock_s"] for r in runs if r["trainer"] == n]) for n in trainers}
    console.print(f"starting student {start_acc:.1%}; held-out: {base.task.eval_prompts} prompts (eval split, task "
                  f"seed {EVAL_SEED}), greedy, the same for every run. Off the clock per run (model load, Ray start, "
                  f"teardown): " + ", ".join(f"{labels[n]} {off[n]:.1f} s" for n in trainers) + ".")
    for name in trainers:
        line = time_split([r for r in runs if r["trainer"] == name], labels[name])
        if line:
            console.print(f"where the time goes: {line}")
    for loss, rows in summary.items():
        by = {r["trainer"]: r for r in rows}
        a, t = by.get("async"), by.get("trl")
        if a is None or t is None:
            continue
        verdict = (f"not in every seed ({a['reached']}/{len(a['seeds'])})" if a["frac_mean"] is None
                   else f"in {a['frac_mean']:.2f} of TRL's wall time ({'<=' if a['frac_mean'] <= 0.5 else '>'} 0.5)")
        console.print(f"{loss}: {labels['async']} reaches TRL's final accuracy {verdict}; TRL itself first reached "
                      f"it at {t['frac_mean']:.2f} of its wall time")
    (out / "results.json").write_text(json.dumps({"budget_s": args.budget, "start_accuracy": start_acc, "runs": runs,
                                                  "summary": summary}, indent=1, default=str))
    console.print(f"plot: {plot(runs, out / 'peers.png')}\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
