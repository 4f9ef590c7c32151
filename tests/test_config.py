"""Config schema and loader: defaults valid, overrides apply, bad input fails with one line naming the field."""

from __future__ import annotations

import pytest

from asyncopd.config import ConfigError, load_config
from asyncopd.control.policies import FullyAsyncPolicy, StepOffPolicy, SyncPolicy, parse_policy


def test_default_config_file_is_valid() -> None:
    cfg = load_config("configs/default.yaml")
    assert isinstance(cfg.policy(), FullyAsyncPolicy)


@pytest.mark.parametrize("text,expected", [
    ("sync", SyncPolicy()),
    ("step_off(2)", StepOffPolicy(2)),
    ("step_off(n=0)", StepOffPolicy(0)),
    ("fully_async(4)", FullyAsyncPolicy(eta=4)),
    ("fully_async(eta=1, max_staleness=3, on_exceed=keep)", FullyAsyncPolicy(1, 3, "keep")),
])
def test_policy_strings(text, expected) -> None:
    assert parse_policy(text) == expected
    assert parse_policy(expected.describe()) == expected


def test_policy_as_mapping_and_overrides() -> None:
    cfg = load_config(None, ["pipeline.policy={kind: step_off, n: 3}", "learner.lr=3e-4", "run.total_steps=7"])
    assert cfg.policy() == StepOffPolicy(3)
    assert cfg.learner.lr == pytest.approx(3e-4) and cfg.run.total_steps == 7


@pytest.mark.parametrize("override,field", [
    ("learner.lr=-1", "learner.lr"),
    ("learner.batchsize=4", "learner.batchsize"),
    ("pipeline.policy=fully_async(eta=-2)", "pipeline.policy"),
    ("pipeline.policy=step_of(2)", "pipeline.policy"),
    ("pipeline.pause_mode=drain", "pipeline.pause_mode"),
    ("layout.teacher.devices=[7]", "layout.teacher.devices"),
    ("layout.learner.workers=2", "layout.learner"),
    ("models.student={preset: builtin-student, path: /x}", "models.student"),
    ("models.student=qwen9-99b", "models.student"),
    ("cluster.hardware=tpu-v9", "cluster.hardware"),
    ("task.max_terms=100", "max_terms"),
])
def test_bad_values_name_the_field(override, field) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override, "sim.cost_model=analytic"])
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["learner.lr"])


def test_simulator_only_settings_are_refused_by_the_trainer() -> None:
    from asyncopd.runtime.setup import check_trainable

    check_trainable(load_config("configs/default.yaml"))
    cfg = load_config(None, ["models.student=qwen3-1.7b"])
    with pytest.raises(ValueError, match="models.student.*simulator only"):
        check_trainable(cfg)
    with pytest.raises(ValueError, match="rollout.backend=vllm needs cluster.device_type=cuda"):
        check_trainable(load_config(None, ["rollout.backend=vllm"]))
    from asyncopd.backends.vllm_backend import vllm_available

    if not vllm_available():
        with pytest.raises(ValueError, match="teacher.backend=vllm but vllm is not installed"):
            check_trainable(load_config(None, ["teacher.backend=vllm", "cluster.device_type=cuda"]))
