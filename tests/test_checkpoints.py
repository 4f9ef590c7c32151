"""Checkpoints, `train --resume` and `asyncopd eval`.

Fast: the checkpoint layout helpers, the recorder's resume mode on a simulated run, the CLI's
errors. Slow (``-m slow``): a real run that checkpoints, "crashes", resumes and is evaluated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncopd.cli import app
from asyncopd.config import dump_config, load_config
from asyncopd.runtime import checkpoints as C
from asyncopd.trace.recorder import RunRecorder
from asyncopd.trace.schema import read_jsonl, read_trace, validate_run_dir
from sim.driver import simulate

runner = CliRunner()


def fake_checkpoint(root: Path, name: str, version: int, **info) -> Path:
    d = C.tmp_dir(root, name)
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / C.STATE_FILE).write_bytes(b"x")
    return C.commit(d, name, {"version": version, "next_prompt_id": 8 * version, **info})


# ----------------------------------------------------------------------------- layout
def test_commit_prune_and_lookup(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    for v in (2, 4, 6, 8):
        fake_checkpoint(root, C.step_name(v), v)
    fake_checkpoint(root, C.FINAL, 8)
    assert [c.name for c in C.list_checkpoints(tmp_path)] == ["step_000002", "step_000004", "step_000006",
                                                              "step_000008", "final"]
    assert C.newest_checkpoint(tmp_path).name == "final"
    assert C.newest_checkpoint(tmp_path, max_version=5).name == "step_000004"
    gone = C.prune(tmp_path, keep=2)
    assert sorted(p.name for p in gone) == ["step_000002", "step_000004"]
    assert sorted(p.name for p in root.iterdir()) == ["final", "step_000006", "step_000008"]
    # a commit over an existing name replaces it whole
    fake_checkpoint(root, C.FINAL, 9)
    assert C.read_checkpoint(root / "final").version == 9 and not list(root.glob(".*"))


def test_incomplete_checkpoints_are_ignored_and_cleaned(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    fake_checkpoint(root, C.step_name(2), 2)
    half = C.tmp_dir(root, C.step_name(4))  # a crash mid-save
    half.mkdir()
    (half / "config.json").write_text("{}")
    no_state = root / "step_000006"  # a directory without trainer state (not ours)
    no_state.mkdir()
    (no_state / "config.json").write_text("{}")
    (no_state / C.RESUME_FILE).write_text(json.dumps({"version": 6}))
    # a crash between the two renames of a commit over "final"
    fake_checkpoint(root, C.FINAL, 8)
    (root / "final").rename(root / ".old-final")
    assert [c.name for c in C.list_checkpoints(tmp_path)] == ["step_000002"]
    C.clean_leftovers(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["final", "step_000002", "step_000006"]
    assert C.newest_checkpoint(tmp_path).name == "final"


def test_resolve_model_dir(tmp_path) -> None:
    fake_checkpoint(tmp_path / "run" / "checkpoints", C.step_name(2), 2)
    fake_checkpoint(tmp_path / "run" / "checkpoints", C.step_name(4), 4)
    assert C.resolve_model_dir(tmp_path / "run").name == "step_000004"
    assert C.resolve_model_dir(tmp_path / "run" / "checkpoints" / "step_000002").name == "step_000002"
    for bad, msg in [(tmp_path / "nope", "does not exist"), (tmp_path, "no config.json and no checkpoints")]:
        with pytest.raises(FileNotFoundError, match=msg):
            C.resolve_model_dir(bad)


def test_saved_config_loads_again(tmp_path) -> None:
    """``config.yaml`` of a run is what ``--resume`` reloads: it must round-trip."""
    for overrides in ([], ["algorithm.loss=sampled_reverse_kl", "algorithm.advantage=offline", "run.checkpoint_every=5"]):
        cfg = load_config("configs/default.yaml", overrides)
        (tmp_path / "c.yaml").write_text(dump_config(cfg))
        assert load_config(tmp_path / "c.yaml") == cfg


# ----------------------------------------------------------------- recorder resume
SIM = ["sim.response_length.kind=lognormal", "sim.prompt_tokens_mean=10", "run.total_steps=6"]


def test_recorder_resume_rolls_back_later_steps_and_keeps_the_files_valid(tmp_path) -> None:
    run = tmp_path / "run"
    cfg = load_config(None, SIM)
    before = simulate(cfg, run, progress=False)
    # damage a hard kill leaves: no closing "]", half a line
    trace = (run / "trace.json").read_text()
    (run / "trace.json").write_text(trace[: trace.rindex("},") + 2] + '\n{"name": "gener')
    with (run / "samples.jsonl").open("a") as f:
        f.write('{"sample_id": 123')
    samples = read_jsonl_lines(run / "samples.jsonl")
    late = [r for r in samples if r["status"] == "consumed" and r["consumed_step"] >= 4]
    rec = RunRecorder(run, driver="sim", clock="simulated", meta={"policy": "x", "config": {}, "created": "now"},
                      workers={"rollout-0": 2, "teacher-0": 1, "learner-0": 1}, resume_from=4)
    assert rec.t_origin >= before["duration_s"]
    assert rec.next_sample_id == 1 + max(r["sample_id"] for r in samples)
    assert rec._consumed == 4 * cfg.learner.batch_size
    rec.close()
    assert [r["step"] for r in read_jsonl(run / "log.jsonl")] == [0, 1, 2, 3]
    assert [r["step"] for r in read_jsonl(run / "log.rolled_back.jsonl")] == [4, 5]
    assert len(read_jsonl(run / "samples.rolled_back.jsonl")) == len(late)
    assert all(r["consumed_step"] < 4 for r in read_jsonl(run / "samples.jsonl") if r["status"] == "consumed")
    events = read_trace(run / "trace.json")  # valid JSON again, closed
    assert (run / "trace.json").read_text().rstrip().endswith("]")
    assert any(e["name"] == "resumed from step 4" for e in events)
    names = [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert len(names) == len(set(names)), "track names written twice"
    info = json.loads((run / "run.json").read_text())
    assert info["resumes"][0]["from_step"] == 4 and info["resumes"][0]["rolled_back_steps"] == 2
    validate_run_dir(run, require_summary=False)


def read_jsonl_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.strip()]


# ------------------------------------------------------------------------ CLI errors
def test_eval_cli_errors_are_one_line(tmp_path) -> None:
    for path, msg in [(tmp_path / "missing", "does not exist"), (tmp_path, "no config.json")]:
        r = runner.invoke(app, ["eval", str(path)])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_resume_cli_errors(tmp_path) -> None:
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a directory" in r.output
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text(dump_config(load_config(None, ["run.total_steps=4"])))
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 2 and "no complete checkpoint" in r.output
    fake_checkpoint(run / "checkpoints", C.FINAL, 4)
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(4)))
    r = runner.invoke(app, ["train", "--resume", str(run)])
    assert r.exit_code == 2 and "nothing left to train" in r.output
    r = runner.invoke(app, ["train", "--resume", str(run), "--set", "run.seed=7", "--set", "run.total_steps=8"])
    assert r.exit_code == 2 and "changes run.seed" in r.output


# ------------------------------------------------------------------ the real trainer
SMALL = ["run.total_steps=4", "learner.batch_size=8", "learner.micro_batch_size=8", "rollout.max_num_seqs=4",
         "layout.rollout.workers=2", "teacher.max_batch_samples=8", "pipeline.policy=fully_async(eta=1)",
         "run.checkpoint_every=2"]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, ray_session):
    """Train 4 steps (checkpoint at 2) on one learner rank, "crash" after step 3, resume to 6
    steps on two ranks (DP=2: the checkpoint does not depend on the number of ranks)."""
    import torch

    from asyncopd.runtime.checkpoints import resume_config
    from asyncopd.runtime.driver import train

    run = tmp_path_factory.mktemp("resume") / "run"
    first = train(load_config("configs/default.yaml", SMALL), run, progress=False, evaluate=False)
    ckpts = run / "checkpoints"
    layout = sorted(p.name for p in ckpts.iterdir())
    ck2 = C.read_checkpoint(ckpts / "step_000002")
    state2 = torch.load(ckpts / "step_000002" / C.STATE_FILE, weights_only=True)
    # as if the process had died after logging step 3: no final checkpoint, trace not closed, half a line
    shutil.rmtree(ckpts / "final")
    trace = (run / "trace.json").read_text()
    (run / "trace.json").write_text(trace[: trace.rindex("},") + 2])
    with (run / "samples.jsonl").open("a") as f:
        f.write('{"sample_id": 1')
    steps_before = read_jsonl(run / "log.jsonl")
    second = train(resume_config(run, ["run.total_steps=6", "layout.learner.devices=[0,1]"]), run, progress=False,
                   evaluate=False, resume=True)
    yield {"run": run, "first": first, "second": second, "layout": layout, "ck2": ck2, "state2": state2,
           "steps_before": steps_before}


@pytest.mark.slow
def test_checkpoints_are_written_and_complete(resumed_run) -> None:
    import torch

    assert resumed_run["first"]["ok"] and resumed_run["layout"] == ["final", "step_000002"]  # (4 = final)
    ck2 = resumed_run["ck2"]
    assert ck2 is not None and ck2.version == 2
    files = {p.name for p in ck2.path.iterdir()}
    assert {"config.json", "model.safetensors", "asyncopd_codec.json", "tokenizer.json", C.STATE_FILE,
            C.RESUME_FILE} <= files
    info = ck2.info
    assert info["counters"]["consumed"] == 16 and info["next_prompt_id"] >= 16
    assert set(info["skipped_prompts"]) <= set(range(info["next_prompt_id"]))
    assert len(info["skipped_prompts"]) <= 1 * 8  # fully_async(eta=1), keep: at most eta * B in flight
    state = resumed_run["state2"]
    assert state["version"] == 2 and state["optimizer"]["state"]
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())
    final = resumed_run["run"] / "checkpoints" / "final"
    end = torch.load(final / C.STATE_FILE, weights_only=True)
    assert end["version"] == 6  # optimizer state carried over the resume: 6 AdamW steps, not 4
    assert all(int(s["step"]) == 6 for s in end["optimizer"]["state"].values())
    assert sorted(p.name for p in (resumed_run["run"] / "checkpoints").iterdir()) == \
        ["final", "step_000002", "step_000004"]


@pytest.mark.slow
def test_resume_continues_the_run(resumed_run) -> None:
    run, second, ck2 = resumed_run["run"], resumed_run["second"], resumed_run["ck2"]
    assert second["ok"] and second["steps"] == 6 and second["resumed_from"] == 2
    assert resumed_run["first"]["learner_ranks"] == 1 and second["learner_ranks"] == 2
    assert second["resume"]["rolled_back_steps"] == 2 and second["samples_consumed"] == 6 * 8
    steps = read_jsonl(run / "log.jsonl")
    assert [r["step"] for r in steps] == list(range(6)) and [r["version"] for r in steps] == list(range(1, 7))
    assert steps[:2] == resumed_run["steps_before"][:2]  # the kept part is untouched
    assert all(a["t_end"] < b["t_end"] for a, b in zip(steps, steps[1:]))  # the clock goes on
    assert [r["step"] for r in read_jsonl(run / "log.rolled_back.jsonl")] == [2, 3]
    samples = read_jsonl(run / "samples.jsonl")
    rolled = read_jsonl(run / "samples.rolled_back.jsonl")
    assert len(rolled) == 16 and {r["consumed_step"] for r in rolled} == {2, 3}
    consumed = [r for r in samples if r["status"] == "consumed"]
    assert len(consumed) == 48 and len({r["prompt_id"] for r in consumed}) == 48
    p = ck2.info["next_prompt_id"]
    assert all(r["prompt_id"] < p for r in consumed if r["consumed_step"] < 2)
    assert all(r["prompt_id"] >= p for r in consumed if r["consumed_step"] >= 2)
    assert not {r["prompt_id"] for r in consumed} & set(ck2.info["skipped_prompts"])
    t_origin = second["resume"]["t_origin"]
    assert all(r["issued_at"] >= t_origin for r in samples if r["prompt_id"] >= p)  # the clock goes on
    ids = [r["sample_id"] for r in samples + rolled]
    assert len(ids) == len(set(ids))
    assert steps[2]["counters"]["attempts"] > ck2.info["counters"]["attempts"]
    validate_run_dir(run)
    assert json.loads((run / "run.json").read_text())["resumes"][0]["from_step"] == 2
    assert C.read_checkpoint(run / "checkpoints" / "final").info["next_prompt_id"] >= p


@pytest.mark.slow
def test_eval_cli_on_checkpoints(resumed_run) -> None:
    run = resumed_run["run"]
    r = runner.invoke(app, ["eval", str(run / "checkpoints" / "step_000004"), "--prompts", "20", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert 0.0 <= out["accuracy"] <= 1.0 and out["n"] == 20 and out["version"] == 4 and out["seed"] == 0
    r = runner.invoke(app, ["eval", str(run), "--prompts", "10"])  # a run directory: its newest checkpoint
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "final" in r.output
