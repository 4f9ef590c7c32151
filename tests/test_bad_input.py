"""Bad input never gives a traceback: one line naming the field or file, and a non-zero exit.

Hypothesis fuzzes the config (random ``--set`` overrides: wrong types, out-of-range values,
unknown fields, devices outside the cluster, model paths without ``config.json``), damaged run
directories (deleted, truncated, overwritten files; broken JSON lines) through ``validate`` and
``compare``, and the command line's path arguments; a checkpoint missing a file goes through
``eval`` and ``train --resume``. Commands run in-process through typer's test runner.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from asyncopd.cli import app
from asyncopd.config import OPDConfig, load_config

CONFIG = "configs/default.yaml"
runner = CliRunner()


def invoke(*args: str):
    r = runner.invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"asyncopd {' '.join(args)} raised:\n"
                             + "".join(traceback.format_exception(r.exception)))
    assert "Traceback" not in r.output
    return r


def error_line(r) -> str:
    """The one stderr line of a failed command."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code != 0
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    return lines[0]


def field_paths(model: type[BaseModel] = OPDConfig, prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(field_paths(ann, f"{path}."))
    return out


FIELDS = field_paths()
KEYS = st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS).map(lambda k: f"{k}.no_such_field"),
                 st.sampled_from(["nosuch", "run.nosuch", "layout.rollout.gpus", "models.student.path",
                                  "models.teacher", "layout.learner.devices"]))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)
RAW_VALUES = st.one_of(
    JSON_VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    st.text(max_size=12), st.sampled_from(["[unclosed", "{a: [1,", "-1", "1e400", "nan", "[0, 9]", "[-1]",
                                           "/", "/tmp", ".", "~", "{path: /}", "{preset: x}"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEYS, value=RAW_VALUES)
def test_config_overrides_are_accepted_or_refused_in_one_line(key: str, value: str) -> None:
    r = invoke("check", CONFIG, "--set", f"{key}={value}")
    if r.exit_code == 0:
        return
    assert r.exit_code == 2
    line = error_line(r)
    assert line.startswith("error:") and (CONFIG in line or "--set" in line), line


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_model_path_without_config_json_is_refused_when_the_config_loads(tmp_path, role) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    for path in (tmp_path, tmp_path / "missing", tmp_path / "weights.bin"):
        r = invoke("check", CONFIG, "--set", f"models.{role}.path={path}")
        assert r.exit_code == 2 and f"models.{role}.path" in error_line(r) and str(path) in error_line(r)
    with pytest.raises(ValueError, match="config.json"):
        load_config(CONFIG, [f"models.{role}.path={tmp_path}"])


# ------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    from sim.driver import simulate

    d = tmp_path_factory.mktemp("fuzz") / "run"
    simulate(load_config(CONFIG, ["run.total_steps=8", "learner.batch_size=4", "learner.micro_batch_size=4"]), d, progress=False)
    return d


def damage(run: Path, data) -> str:
    """Damage one file of ``run`` as ``data`` draws; returns what was done."""
    files = sorted(p for p in run.rglob("*") if p.is_file())
    f = data.draw(st.sampled_from(files))
    how = data.draw(st.sampled_from(["delete", "truncate", "garbage", "json", "line", "empty", "dir"]))
    raw = f.read_bytes()
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))])
    elif how == "garbage":
        at = data.draw(st.integers(0, len(raw)))
        f.write_bytes(raw[:at] + data.draw(st.binary(min_size=1, max_size=16)) + raw[at:])
    elif how == "json":
        f.write_text(json.dumps(data.draw(JSON_VALUES)))
    elif how == "line":
        lines = raw.decode(errors="replace").splitlines()
        if lines:
            lines[data.draw(st.integers(0, len(lines) - 1))] = json.dumps(data.draw(JSON_VALUES))
        f.write_text("\n".join(lines) + "\n")
    elif how == "empty":
        f.write_bytes(b"")
    else:  # a directory where the file was
        f.unlink()
        f.mkdir()
    return f"{how} {f.relative_to(run)}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_run_directories_are_refused_in_one_line(sim_run: Path, data) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(sim_run, run)
        for _ in range(data.draw(st.integers(1, 2))):
            damage(run, data)
        v = invoke("validate", str(run))
        assert v.exit_code in (0, 1)
        if v.exit_code:
            error_line(v)
        for a, b in ((sim_run, run), (run, sim_run)):
            c = invoke("compare", str(a), str(b), "--no-plots", "--out", str(Path(tmp) / "cmp"))
            assert c.exit_code in (0, 2)
            if c.exit_code:
                assert str(run) in error_line(c)


@settings(max_examples=100, deadline=None)
@given(command=st.sampled_from(["validate", "compare", "eval", "check", "calibrate-from-run", "resume"]),
       path=st.sampled_from(["", ".", "/", "nonexistent", "configs/default.yaml", "README.md", "configs",
                             "/dev/null", "tests"]))
def test_path_arguments_that_are_not_what_a_command_reads(command: str, path: str) -> None:
    args = {"validate": ["validate", path], "compare": ["compare", path, path, "--no-plots"],
            "eval": ["eval", path], "check": ["check", path], "resume": ["train", "--resume", path],
            "calibrate-from-run": ["calibrate", "--from-run", path, "--out", "/dev/null/x.yaml"]}[command]
    if command == "check" and path == "configs/default.yaml":
        return
    r = invoke(*args)
    assert r.exit_code in (1, 2)
    error_line(r)


# -------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A run directory holding one complete checkpoint of the built-in student (no training:
    the pieces a checkpoint has, taken from the model cache), at step 5 of 10."""
    import torch

    from asyncopd.models.builtin import resolve_model

    cfg = load_config(CONFIG, ["run.total_steps=10"])
    run = tmp_path_factory.mktemp("ck") / "run"
    ck = run / "checkpoints" / "step_000005"
    shutil.copytree(resolve_model(cfg.models.student.preset, cfg.task, seed=cfg.run.seed, progress=False), ck)
    torch.save({"version": 5}, ck / "trainer_state.pt")
    (ck / "resume.json").write_text(json.dumps({"version": 5, "next_prompt_id": 40, "task": cfg.task.model_dump()}))
    (run / "run.json").write_text(json.dumps({"driver": "ray"}))
    (run / "log.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in range(5)))
    (run / "config.yaml").write_text(Path(CONFIG).read_text())
    return run


def test_checkpoint_missing_a_file_is_refused_in_one_line(checkpoint: Path, tmp_path) -> None:
    names = sorted(p.name for p in (checkpoint / "checkpoints" / "step_000005").iterdir())
    assert "trainer_state.pt" in names and "config.json" in names
    for name in names:
        run = tmp_path / name / "run"
        shutil.copytree(checkpoint, run)
        (run / "checkpoints" / "step_000005" / name).unlink()
        r = invoke("eval", str(run / "checkpoints" / "step_000005"), "--prompts", "2")
        assert r.exit_code in (0, 2), name
        if r.exit_code:
            assert "step_000005" in error_line(r)
        if name in ("trainer_state.pt", "config.json", "resume.json"):  # what resuming needs
            r = invoke("train", "--resume", str(run), "--no-progress", "--no-plots")
            assert r.exit_code == 2 and "checkpoint" in error_line(r), name
    for name in ("resume.json", "config.yaml", "run.json"):
        run = tmp_path / f"trunc-{name}" / "run"
        shutil.copytree(checkpoint, run)
        f = next(run.rglob(name))
        f.write_text("run: [" if name == "config.yaml" else f.read_text()[:7])
        r = invoke("train", "--resume", str(run), "--no-progress", "--no-plots")
        assert r.exit_code == 2, name
        error_line(r)
