"""TRL's on-policy distillation trainer on the built-in task, for a fixed wall-clock budget.

Used by ``bench/peers.py``; needs TRL (``pip install -e '.[peers]'``).

Which TRL trainer
    TRL's ``DistillationTrainer`` (``trl.DistillationTrainer``, stable since TRL 1.x): the student
    samples every completion itself (on-policy; there is no off-policy fraction to set) and is
    trained to match the teacher's next-token distribution over the **whole vocabulary** at each
    completion position, a generalised Jensen-Shannon divergence chosen by ``beta``
    (``trl/kernels/chunked_divergence.py``, ``ChunkedDivergenceFunction``)::

        beta = 0:  KL(p_teacher || p_student)   forward KL   (asyncopd: forward_kl_topk)
        beta = 1:  KL(p_student || p_teacher)   reverse KL   (asyncopd: reverse_kl_topk)

    reduced as a token mean over the batch's completion tokens (cut after the first EOS), the
    same reduction asyncopd's learner uses. TRL's experimental ``GKDTrainer`` with ``lmbda=1``
    (all student data) and ``temperature=1`` is the same algorithm; TRL itself warns that this
    GKD configuration "is fully covered by DistillationTrainer", so the bench uses the latter.

Setup
    The student and teacher are loaded by TRL from the same Hugging Face directories asyncopd
    trains from; the tokenizer is the built-in character tokenizer (``tokenizer.json``), padded on
    the left, and each prompt is ``"<bos>" + prompt_text`` (asyncopd's codec puts BOS first; the
    HF tokenizer does not add it). Prompts are the task's train split for the run's seed, in id
    order (``shuffle_dataset=False``), the stream asyncopd draws from. AdamW, constant learning
    rate, no warm-up, no weight decay, gradient clipping 1.0, float32, no gradient checkpointing,
    one process on the CPU with ``threads`` torch threads. ``bench/peers.py`` gives it one: on the
    shared 2-core host torch's default of two threads stalls for seconds at a time whenever another
    process takes a core (each op's parallel region waits for its descheduled second thread;
    measured: single updates of 10-50 s, 12-140 samples/s), while one thread ran 157 samples/s
    without a stall; the tiny model's ops gain nothing from a second thread even on a quiet host.

Clock
    ``WallClock`` (a ``TrainerCallback``) starts the clock at ``on_train_begin`` (after the models
    are loaded and the trainer is built; asyncopd's budget likewise starts after its actors are
    up), stops training at the first update boundary past the budget, and every ``every``
    updates (and at the last one) saves the student for evaluation afterwards, the clock paused
    while it saves. Evaluation is never on the clock.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

# Files of a built-in model directory that evaluation needs beside the weights (the codec).
CODEC_FILES = ("asyncopd_codec.json", "asyncopd_build.json", "tokenizer.json", "tokenizer_config.json")


def trl_version() -> str:
    import trl

    return trl.__version__


def prompt_dataset(n: int, seed: int, task_cfg: Any = None):
    """The first ``n`` train-split prompts of the task for ``seed``, as TRL's ``prompt`` column."""
    from datasets import Dataset

    from asyncopd.task import BuiltinTask

    task = BuiltinTask(task_cfg, seed=seed)
    return Dataset.from_dict({"prompt": ["<bos>" + p.prompt_text for p in task.problems(n, "train")]})


def save_student(model: Any, src_dir: Path, dst: Path) -> None:
    """The student as an HF directory ``asyncopd eval`` reads (weights + the built-in codec files)."""
    model.save_pretrained(dst, safe_serialization=True)
    for name in CODEC_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dst / name)


def make_callback(budget_s: float, every: int, snapshot_dir: Path, student_dir: Path):
    from transformers import TrainerCallback

    class WallClock(TrainerCallback):
        """Training clock with pauses; snapshots every ``every`` updates; stops past the budget."""

        def __init__(self) -> None:
            self.t0 = 0.0
            self.paused = 0.0
            self.snapshots: list[dict[str, Any]] = []
            self.train_s = 0.0
            self.steps = 0
            self.cpu0 = self.cpu_paused = self.cpu_s = 0.0

        def now(self) -> float:
            return time.perf_counter() - self.t0 - self.paused

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.paused = time.perf_counter(), 0.0
            self.cpu0, self.cpu_paused = time.process_time(), 0.0

        def on_step_end(self, args, state, control, model=None, **kw):
            t = self.now()
            self.steps, self.train_s = state.global_step, t
            self.cpu_s = time.process_time() - self.cpu0 - self.cpu_paused
            last = t >= budget_s
            if last or state.global_step % every == 0:
                p0, c0 = time.perf_counter(), time.process_time()
                path = snapshot_dir / f"step_{state.global_step:06d}"
                save_student(model, student_dir, path)
                self.snapshots.append({"version": state.global_step, "t": t, "path": str(path)})
                self.paused += time.perf_counter() - p0
                self.cpu_paused += time.process_time() - c0
            if last:
                control.should_training_stop = True
            return control

    return WallClock()


def run_trl(*, student_dir: Path, teacher_dir: Path, out: Path, beta: float, seed: int, budget_s: float,
            every: int, batch_size: int, lr: float, max_new_tokens: int, temperature: float,
            threads: int | None = None, task_cfg: Any = None) -> dict[str, Any]:
    """Train with TRL's ``DistillationTrainer`` for ``budget_s`` training seconds; returns the
    snapshots (version, training-clock time, path), steps, samples/s and where the time went.
    ``threads``: torch's intra-op threads (None: torch's default, one per core)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from transformers import AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    t_setup = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(student_dir)
    tok.padding_side = "left"
    # Enough prompts that the budget never exhausts them (a new epoch would re-use prompts): 50 updates/s.
    n_prompts = batch_size * int(max(1000, 50 * budget_s))
    args = DistillationConfig(
        output_dir=str(out / "trainer"), seed=seed, data_seed=seed, use_cpu=True, report_to="none",
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, max_steps=10**6,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False, beta=beta, temperature=temperature,
        top_p=1.0, top_k=0, max_completion_length=max_new_tokens,
        model_init_kwargs={"dtype": "float32"}, teacher_model_init_kwargs={"dtype": "float32"},
    )
    clock = make_callback(budget_s, every, out / "snapshots", Path(student_dir))
    trainer = DistillationTrainer(model=str(student_dir), teacher_model=str(teacher_dir), args=args,
                                  train_dataset=prompt_dataset(n_prompts, seed, task_cfg), processing_class=tok,
                                  callbacks=[clock])
    # Where the time goes: wrap the trainer's generation call (its own method, unchanged) with a timer.
    gen = {"s": 0.0, "tokens": 0}
    inner = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        g0 = time.perf_counter()
        ids = inner(*a, **kw)
        gen["s"] += time.perf_counter() - g0
        gen["tokens"] += sum(len(x) for x in ids)
        return ids

    trainer._generate_single_turn = timed_generate
    setup_s = time.perf_counter() - t_setup
    trainer.train()
    samples = clock.steps * batch_size
    return {"trainer": "trl", "snapshots": clock.snapshots, "steps": clock.steps, "train_s": clock.train_s,
            "samples": samples, "samples_per_s": samples / clock.train_s if clock.train_s > 0 else 0.0,
            "setup_s": setup_s, "generate_s": gen["s"], "generated_tokens": gen["tokens"], "cpu_s": clock.cpu_s,
            "torch_threads": torch.get_num_threads(), "processes": 1}


def main(argv: list[str]) -> None:
    """``python bench/peers_trl.py SPEC.json``: one run in a fresh process (``bench/peers.py`` runs
    it so); SPEC holds ``run_trl``'s arguments; the result goes to ``out/result.json``."""
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(spec["out"])
    for k in ("student_dir", "teacher_dir", "out"):
        spec[k] = Path(spec[k])
    task = spec.pop("task", None)
    if task is not None:
        from asyncopd.task import TaskConfig

        task = TaskConfig.model_validate(task)
    result = run_trl(**spec, task_cfg=task)
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
