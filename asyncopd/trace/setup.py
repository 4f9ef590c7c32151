"""What both drivers do at the start of a run: open the recorder, build the controller.

Kept in one place so a simulated run and a real run of the same config schedule with the
same controller parameters and describe themselves the same way in ``run.json``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Mapping

from asyncopd.config.loader import dump_config
from asyncopd.config.schema import OPDConfig
from asyncopd.control.controller import Controller
from asyncopd.trace.recorder import RunRecorder


def start_run(cfg: OPDConfig, run_dir: str | Path | None, *, driver: str, clock: str, slots_per_worker: int,
              seed: int, extra_meta: dict[str, Any] | None = None,
              resume: Mapping[str, Any] | None = None) -> tuple[RunRecorder, Controller]:
    """Open the run directory (``None``: in memory) and the controller that records into it.

    ``resume``: the ``resume.json`` of a checkpoint (``version``, ``next_prompt_id``,
    ``next_sample_id``, ``counters``) to continue ``run_dir`` from: the recorder appends (see
    ``RunRecorder._restore``) and the controller starts at that version and data position."""
    lay = cfg.layout
    slots = [slots_per_worker] * lay.rollout.workers
    lanes = {f"rollout-{i}": n for i, n in enumerate(slots)}
    lanes |= {f"teacher-{i}": 1 for i in range(lay.teacher.workers)} | {"learner-0": 1}
    meta = {"policy": cfg.policy().describe(), "seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "python": platform.python_version(), **(extra_meta or {}),
            "config": json.loads(json.dumps(cfg.model_dump(mode="json")))}
    version = int(resume["version"]) if resume is not None else None
    if version is not None and version >= cfg.run.total_steps:
        raise ValueError(f"the checkpoint is at step {version} and run.total_steps is {cfg.run.total_steps}: "
                         f"nothing left to train (raise run.total_steps to continue)")
    recorder = RunRecorder(run_dir, driver=driver, clock=clock, workers=lanes, meta=meta, resume_from=version)
    if run_dir is not None:
        (Path(run_dir) / "config.yaml").write_text(dump_config(cfg))
    start: dict[str, Any] = {}
    if resume is not None:
        start = {"start_version": version, "first_prompt_id": int(resume["next_prompt_id"]),
                 "first_sample_id": max(int(resume.get("next_sample_id", 0)), recorder.next_sample_id),
                 "counters": dict(resume.get("counters") or {})}
    ctrl = Controller(policy=cfg.policy(), batch_size=cfg.learner.batch_size, total_steps=cfg.run.total_steps,
                      rollout_slots=slots, n_teachers=lay.teacher.workers,
                      teacher_max_batch=cfg.teacher.max_batch_samples,
                      teacher_min_batch=cfg.teacher.min_batch_samples, pause_mode=cfg.pipeline.pause_mode,
                      observer=recorder, **start)
    return recorder, ctrl
