"""Built-in tiny models: cache, build lock, loading, codecs and accuracy targets.

The teacher and student are built once into the default cache (``$ASYNCOPD_CACHE`` or
``~/.cache/asyncopd``), so the rest of the suite and the demo reuse them; a cold cache costs
about a minute here.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest

torch = pytest.importorskip("torch")

from asyncopd.models import (  # noqa: E402
    BUILD_INFO,
    HFTokenizerCodec,
    build_info,
    builtin_dir,
    char_codec_to_hf,
    evaluate,
    evaluate_accuracy,
    load_causal_lm,
    load_codec,
    resolve_model,
)
from asyncopd.models import builtin as builtin_mod  # noqa: E402
from asyncopd.models.presets import PRESETS, STUDENT, TEACHER, Recipe  # noqa: E402
from asyncopd.task import BuiltinTask, CharCodec, TaskConfig  # noqa: E402

TASK_CFG = TaskConfig()


@pytest.fixture(scope="session")
def teacher_dir():
    return resolve_model("builtin-teacher", TASK_CFG, seed=0, progress=False)


@pytest.fixture(scope="session")
def student_dir():
    return resolve_model("builtin-student", TASK_CFG, seed=0, progress=False)


@pytest.fixture(scope="session")
def task():
    return BuiltinTask(TASK_CFG, seed=0)


@pytest.fixture(scope="session")
def accuracies(teacher_dir, student_dir, task):
    out = {}
    for name, d in (("teacher", teacher_dir), ("student", student_dir)):
        model, codec = load_causal_lm(d), load_codec(d)
        out[name] = evaluate(model, codec, task, n=200, split="eval", batch_size=100)
    return out


# ----------------------------------------------------------------------------- cache
def test_cache_hit_does_not_retrain(teacher_dir, monkeypatch):
    stamp = (teacher_dir / BUILD_INFO).stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(builtin_mod, "_train", boom)
    again = resolve_model("builtin-teacher", TASK_CFG, seed=0, progress=False)
    assert again == teacher_dir
    assert (teacher_dir / BUILD_INFO).stat().st_mtime_ns == stamp
    assert builtin_dir("builtin-teacher", TASK_CFG, seed=0) == teacher_dir


def test_checkpoint_layout(teacher_dir, student_dir):
    for d, preset in ((teacher_dir, TEACHER), (student_dir, STUDENT)):
        for f in ("config.json", "model.safetensors", "asyncopd_codec.json", "tokenizer.json", BUILD_INFO):
            assert (d / f).is_file(), f"{d} lacks {f}"
        info = build_info(d)
        assert info["preset"] == preset.name and info["params"] > 0
    assert build_info(teacher_dir)["params"] > 2 * build_info(student_dir)["params"]


def test_cache_key_tracks_what_determines_the_weights(tmp_path):
    base = builtin_dir("builtin-student", TASK_CFG, seed=0, cache_dir=tmp_path)
    assert base.parent == tmp_path / "models"
    assert builtin_dir("builtin-student", TASK_CFG, seed=1, cache_dir=tmp_path) != base
    assert builtin_dir("builtin-student", TaskConfig(max_terms=10), seed=0, cache_dir=tmp_path) != base
    assert builtin_dir("builtin-teacher", TASK_CFG, seed=0, cache_dir=tmp_path) != base


def test_env_var_sets_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYNCOPD_CACHE", str(tmp_path / "c"))
    assert builtin_dir("builtin-student", TASK_CFG).parent == tmp_path / "c" / "models"


def test_concurrent_builds_train_once(tmp_path, monkeypatch):
    """Two callers at once: one builds (under the file lock), the other waits and reuses it."""
    tiny = dataclasses.replace(STUDENT, recipe=Recipe(steps=3, batch_size=4, lr=1e-3, warmup_steps=1))
    monkeypatch.setitem(PRESETS, "builtin-student", tiny)
    calls = []
    real_train = builtin_mod._train

    def counting(*a, **k):
        calls.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(builtin_mod, "_train", counting)
    cfg = TaskConfig(max_terms=4, eval_prompts=4)
    results, errors = [], []

    def worker():
        try:
            results.append(resolve_model("builtin-student", cfg, cache_dir=tmp_path, progress=False))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1
    assert results[0] == results[1] and (results[0] / BUILD_INFO).is_file()
    # no temporary directories left behind
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")] == [results[0].name]
    assert not [p for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("training exploded")

    monkeypatch.setattr(builtin_mod, "_train", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        resolve_model("builtin-student", TaskConfig(max_terms=4), cache_dir=tmp_path, progress=False)
    assert not [p for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]


# ----------------------------------------------------------------------------- user paths
def test_bad_paths_give_clear_errors(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model(str(missing), TASK_CFG)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty-model.*config.json"):
        resolve_model(str(empty), TASK_CFG)
    with pytest.raises(FileNotFoundError, match="empty-model"):
        load_causal_lm(empty)
    with pytest.raises(ValueError, match="builtin-teacher"):
        resolve_model("builtin-huge", TASK_CFG)


def test_user_path_is_returned_as_is(teacher_dir, tmp_path):
    assert resolve_model(str(teacher_dir), TASK_CFG) == teacher_dir.resolve()


# ----------------------------------------------------------------------------- codecs
def test_load_codec_prefers_the_char_codec(teacher_dir, task):
    assert load_codec(teacher_dir) == CharCodec()
    hf = HFTokenizerCodec.from_pretrained(teacher_dir)  # the tokenizer.json written next to it
    c = CharCodec()
    for p in task.problems(20):
        assert hf.encode(p.prompt_text) == c.encode(p.prompt_text)
        assert hf.encode_prompt(p.prompt_text) == c.encode_prompt(p.prompt_text)
        ids = c.encode(p.target_text) + [c.eos_id]
        assert hf.decode(ids) == p.target_text
    assert (hf.pad_id, hf.bos_id, hf.eos_id, hf.vocab_size) == (c.pad_id, c.bos_id, c.eos_id, c.vocab_size)


def test_hf_tokenizer_adapter_from_a_plain_directory(tmp_path):
    char_codec_to_hf(CharCodec()).save_pretrained(str(tmp_path))
    codec = load_codec(tmp_path)  # no asyncopd_codec.json here: the HF adapter
    assert isinstance(codec, HFTokenizerCodec)
    assert codec.decode(codec.encode_prompt("a1b2=") + [codec.eos_id]) == "a1b2="
    codec.save(tmp_path / "copy")
    assert HFTokenizerCodec.load(tmp_path / "copy").encode("a1") == codec.encode("a1")
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        HFTokenizerCodec.from_pretrained(tmp_path / "nothing")


# ----------------------------------------------------------------------------- models
def test_load_causal_lm(teacher_dir):
    m = load_causal_lm(teacher_dir)
    assert not m.training and next(m.parameters()).dtype == torch.float32
    assert m.config.vocab_size == CharCodec().vocab_size
    mb = load_causal_lm(teacher_dir, dtype="bfloat16")
    assert next(mb.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(teacher_dir, dtype="int3")


def test_teacher_is_accurate_and_student_is_not(accuracies):
    t, s = accuracies["teacher"], accuracies["student"]
    assert t.accuracy >= 0.9, t
    assert s.accuracy < t.accuracy - 0.4, (t, s)
    # the warm-started student still writes well-formed responses that end with EOS
    assert s.eos_rate >= 0.8 and s.well_formed >= 0.6, s
    assert 12 <= t.mean_response_tokens <= 25


def test_evaluate_accuracy_matches_evaluate(teacher_dir, task, accuracies):
    m, c = load_causal_lm(teacher_dir), load_codec(teacher_dir)
    acc = evaluate_accuracy(m, c, task, n=50, batch_size=16)
    full = evaluate(m, c, task, problems=task.problems(50, "eval"))
    assert acc == full.accuracy


def test_evaluation_uses_left_padding_correctly(teacher_dir, task):
    """Batch composition must not change greedy outputs (left padding + attention mask)."""
    from asyncopd.models import greedy_generate

    m, c = load_causal_lm(teacher_dir), load_codec(teacher_dir)
    probs = task.problems(12, "eval")
    prompts = [p.prompt_text for p in probs]
    batched = greedy_generate(m, c, prompts, batch_size=12)
    single = [greedy_generate(m, c, [p], batch_size=1)[0] for p in prompts]
    assert batched == single
