"""Checkpoint directories of a real run: layout, atomic commit, retention, lookup, and the
checkpoint and config a resumed run starts from (``find_resume_checkpoint``, ``resume_config``).

Layout (``docs/trace-format.md``)::

    RUN_DIR/checkpoints/step_000050/   after update 50 (every ``run.checkpoint_every`` updates)
    RUN_DIR/checkpoints/final/         at the end of the run (always kept)

Each is a Hugging Face model directory (``config.json``, ``model.safetensors``, the codec /
tokenizer files) plus ``trainer_state.pt`` (the learner's weights, optimizer state and
version) and ``resume.json`` (the controller's data position, counters, elapsed time).

A checkpoint is written into ``checkpoints/.tmp-NAME`` (the learner writes the model and the
trainer state, the driver adds ``resume.json`` last) and renamed into place: a directory
named ``step_*`` or ``final`` is always complete, and leftovers of a crash (``.tmp-*``) are
ignored and cleaned up by the next run. Pure Python (no torch, no ray).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from asyncopd.config import ConfigError, OPDConfig, load_config
from asyncopd.task import BuiltinTask, CharCodec, TaskConfig
from asyncopd.trace.schema import RunFormatError, read_json

CHECKPOINTS = "checkpoints"
FINAL = "final"
RESUME_FILE = "resume.json"
STATE_FILE = "trainer_state.pt"
RESUME_FORMAT = 1


def step_name(version: int) -> str:
    return f"step_{version:06d}"


def tmp_dir(root: str | os.PathLike[str], name: str) -> Path:
    return Path(root) / f".tmp-{name}"


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    version: int
    info: dict[str, Any]  # resume.json

    @property
    def name(self) -> str:
        return self.path.name


def read_checkpoint(path: str | os.PathLike[str]) -> Optional[Checkpoint]:
    """The checkpoint at ``path`` if it is complete (model, trainer state and resume.json), else None."""
    p = Path(path)
    try:
        info = json.loads((p / RESUME_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("version"), int):
        return None
    if not ((p / STATE_FILE).is_file() and (p / "config.json").is_file()):
        return None
    return Checkpoint(p, info["version"], info)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first (``final`` after a ``step_*`` of the same version)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [c for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
             and (c := read_checkpoint(d)) is not None]
    return sorted(found, key=lambda c: (c.version, c.name == FINAL, c.name))


def newest_checkpoint(run_dir: str | os.PathLike[str], max_version: Optional[int] = None) -> Optional[Checkpoint]:
    found = [c for c in list_checkpoints(run_dir) if max_version is None or c.version <= max_version]
    return found[-1] if found else None


def commit(tmp: str | os.PathLike[str], name: str, info: dict[str, Any]) -> Path:
    """Finish the checkpoint written into ``tmp``: add ``resume.json``, then rename it to
    ``name`` next to it (replacing an older one of that name)."""
    src = Path(tmp)
    dst = src.parent / name
    text = json.dumps({"format": RESUME_FORMAT, **info}, indent=2, default=str)
    part = src / (RESUME_FILE + ".part")
    part.write_text(text)
    os.replace(part, src / RESUME_FILE)
    old = src.parent / f".old-{name}"
    if dst.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(dst, old)
    os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def prune(run_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete ``step_*`` checkpoints (``final`` stays)."""
    steps = [c for c in list_checkpoints(run_dir) if c.name != FINAL]
    gone = [c.path for c in steps[: max(0, len(steps) - max(1, keep))]]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def clean_leftovers(run_dir: str | os.PathLike[str]) -> None:
    """Remove what a crash mid-save left (``.tmp-*``); put back a checkpoint caught between the
    two renames of ``commit`` (``.old-NAME`` without ``NAME``)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name.startswith(".old-"):
            name = d.name[len(".old-"):]
            if not (root / name).exists():
                os.rename(d, root / name)
            else:
                shutil.rmtree(d, ignore_errors=True)
    for d in root.iterdir():
        if d.name.startswith(".tmp-"):
            shutil.rmtree(d, ignore_errors=True)


# Fields a resumed run must share with the run it continues: they define the prompt stream
# (the data position is an index into it) and the model the trainer state belongs to.
RESUME_FIXED = ("models", "task", "run.seed")


def resume_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> OPDConfig:
    """The config a run directory was last run with (its ``config.yaml``), with ``--set`` overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml; is it a run directory of `asyncopd train`?")
    return load_config(path, overrides)


def find_resume_checkpoint(run_dir: str | Path, cfg: OPDConfig) -> Checkpoint:
    """The checkpoint a resumed run starts from: the newest complete one whose updates are all
    in ``log.jsonl`` (so the steps stay contiguous). Refuses a config that changes what the
    checkpoint and the data position depend on (``RESUME_FIXED``)."""
    d = Path(run_dir)
    if not (d / "run.json").is_file():
        raise FileNotFoundError(f"{d} is not a run directory (no run.json)")
    if not isinstance(read_json(d / "run.json"), dict):  # (the resumed run adds to it)
        raise RunFormatError(f"{d / 'run.json'}: not a JSON object")
    if (d / "config.yaml").is_file():
        saved, now = resume_config(d).model_dump(mode="json"), cfg.model_dump(mode="json")

        def at(tree: dict[str, Any], dotted: str) -> Any:
            for k in dotted.split("."):
                tree = tree[k]
            return tree

        changed = [f for f in RESUME_FIXED if at(saved, f) != at(now, f)]
        if changed:
            raise ConfigError(f"cannot resume {d} with a config that changes {', '.join(changed)} "
                              f"(the checkpoint and the data position depend on them)")
    logged = 0
    for r in _complete_jsonl(d / "log.jsonl"):
        if r.get("step") != logged:
            break
        logged += 1
    clean_leftovers(d)
    ck = newest_checkpoint(d, max_version=logged)
    if ck is None:
        have = [f"{c.name} (step {c.version})" for c in list_checkpoints(d)]
        raise FileNotFoundError(f"{d / CHECKPOINTS} has no complete checkpoint to resume from"
                                + (f" within the {logged} steps log.jsonl records: {', '.join(have)}" if have else ""))
    if ck.version >= cfg.run.total_steps:
        raise ValueError(f"{ck.path} is at step {ck.version} and run.total_steps is {cfg.run.total_steps}: nothing "
                         f"left to train (raise it, e.g. --set run.total_steps={ck.version + cfg.run.total_steps})")
    return ck


def _complete_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file up to the first incomplete or broken line."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text().split("\n")[:-1]:  # (text after the last newline is unfinished)
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model directory to evaluate: ``path`` itself when it has ``config.json``; for a run
    directory, its newest checkpoint. Raises ``FileNotFoundError`` with a one-line reason."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is not a directory (expected a checkpoint or a run directory)")
    if (p / "config.json").is_file():
        return p
    if (p / CHECKPOINTS).is_dir():
        newest = newest_checkpoint(p)
        if newest is not None:
            return newest.path
        models = sorted((d for d in (p / CHECKPOINTS).iterdir()
                         if d.is_dir() and not d.name.startswith(".") and (d / "config.json").is_file()),
                        key=lambda d: d.stat().st_mtime)
        if models:  # (a run from before checkpoints carried resume.json)
            return models[-1]
        raise FileNotFoundError(f"{p / CHECKPOINTS} holds no complete checkpoint")
    raise FileNotFoundError(f"{p} has no config.json and no checkpoints/ directory "
                            f"(expected a Hugging Face checkpoint directory or a run directory)")


def eval_context(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What held-out evaluation of ``model_dir`` should use: the task config and seed of the run
    that wrote it (from its ``resume.json``, else the run's ``config.yaml`` two levels up, else
    a built-in model's ``asyncopd_build.json``, else the defaults), and its version if known."""
    import yaml

    p = Path(model_dir)
    ctx: dict[str, Any] = {"task": None, "seed": None, "version": None, "source": "defaults"}
    info = read_checkpoint(p)
    if info is not None:
        ctx.update(version=info.version)
        if isinstance(info.info.get("task"), dict):
            ctx.update(task=info.info["task"], seed=info.info.get("seed"), source=str(p / RESUME_FILE))
            return ctx
    run_cfg = p.parent.parent / "config.yaml"
    if p.parent.name == CHECKPOINTS and run_cfg.is_file():
        try:
            tree = yaml.safe_load(run_cfg.read_text()) or {}
            ctx.update(task=tree.get("task"), seed=(tree.get("run") or {}).get("seed"), source=str(run_cfg))
            return ctx
        except yaml.YAMLError:
            pass
    build = p / "asyncopd_build.json"
    if build.is_file():
        try:
            b = json.loads(build.read_text())
            ctx.update(task=b.get("task"), seed=b.get("seed"), source=str(build))
        except json.JSONDecodeError:
            pass
    return ctx


def evaluate_checkpoint(path: str | os.PathLike[str], *, n: Optional[int] = None, seed: Optional[int] = None,
                        batch_size: int = 100) -> dict[str, Any]:
    """Greedy held-out accuracy (eval split of the built-in task) of a checkpoint directory or
    of a run directory's newest checkpoint. ``seed`` picks the task's problem set (default: the
    run's seed); ``n`` the number of prompts (default: ``task.eval_prompts``). Raises
    ``FileNotFoundError`` / ``ValueError`` with a one-line reason."""
    from asyncopd.models import evaluate, load_causal_lm, load_codec  # (lazy: they load torch and transformers)

    model_dir = resolve_model_dir(path)
    ctx = eval_context(model_dir)
    try:
        codec = load_codec(model_dir)
    except Exception as e:  # noqa: BLE001 (a broken tokenizer: say which directory)
        raise ValueError(f"{model_dir}: cannot load its codec/tokenizer ({e.__class__.__name__}: {e})") from None
    if not isinstance(codec, CharCodec):
        raise ValueError(f"{model_dir} has no asyncopd_codec.json: held-out accuracy is measured on the built-in "
                         f"task, which needs the built-in character codec")
    try:
        task_cfg = TaskConfig.model_validate(ctx["task"] or {})
    except ValueError as e:
        raise ValueError(f"{ctx['source']}: invalid task config ({e.__class__.__name__})") from None
    task_seed = int(seed if seed is not None else ctx["seed"] if ctx["seed"] is not None else 0)
    try:
        model = load_causal_lm(model_dir)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{model_dir}: cannot load the model ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    result = evaluate(model, codec, BuiltinTask(task_cfg, seed=task_seed), n=n, batch_size=batch_size)
    return {"checkpoint": str(model_dir), "version": ctx["version"], "seed": task_seed, "task": task_cfg.name,
            "split": "eval", **result.as_dict()}
