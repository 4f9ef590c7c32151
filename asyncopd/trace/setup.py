"""What both drivers do at the start of a run: open the recorder, build the controller.

Kept in one place so a simulated run and a real run of the same config schedule with the
same controller parameters and describe themselves the same way in ``run.json``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from asyncopd.config.loader import dump_config
from asyncopd.config.schema import OPDConfig
from asyncopd.control.controller import Controller
from asyncopd.trace.recorder import RunRecorder


def start_run(cfg: OPDConfig, run_dir: str | Path | None, *, driver: str, clock: str, slots_per_worker: int,
              seed: int, extra_meta: dict[str, Any] | None = None) -> tuple[RunRecorder, Controller]:
    """Open the run directory (``None``: in memory) and the controller that records into it."""
    lay = cfg.layout
    slots = [slots_per_worker] * lay.rollout.workers
    lanes = {f"rollout-{i}": n for i, n in enumerate(slots)}
    lanes |= {f"teacher-{i}": 1 for i in range(lay.teacher.workers)} | {"learner-0": 1}
    meta = {"policy": cfg.policy().describe(), "seed": seed, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "python": platform.python_version(), **(extra_meta or {}),
            "config": json.loads(json.dumps(cfg.model_dump(mode="json")))}
    recorder = RunRecorder(run_dir, driver=driver, clock=clock, workers=lanes, meta=meta)
    if run_dir is not None:
        (Path(run_dir) / "config.yaml").write_text(dump_config(cfg))
    ctrl = Controller(policy=cfg.policy(), batch_size=cfg.learner.batch_size, total_steps=cfg.run.total_steps,
                      rollout_slots=slots, n_teachers=lay.teacher.workers,
                      teacher_max_batch=cfg.teacher.max_batch_samples,
                      teacher_min_batch=cfg.teacher.min_batch_samples, pause_mode=cfg.pipeline.pause_mode,
                      observer=recorder)
    return recorder, ctrl
