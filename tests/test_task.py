"""The built-in running-sum task and its character codec (pure Python, no torch)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from asyncopd.task import (
    CODEC_FILENAME,
    LABELS,
    BuiltinTask,
    CharCodec,
    TaskConfig,
    TextCodec,
    make_problem,
    prompt_tokens_for,
    response_tokens_for,
)


@pytest.fixture(scope="module")
def task() -> BuiltinTask:
    return BuiltinTask(TaskConfig(), seed=0)


# ----------------------------------------------------------------------------- problems
def test_problem_format_example():
    p = make_problem([3, 7, 2, 9])
    assert p.prompt_text == "a3b7c2d9="
    assert p.target_text == "a33b70c22d91>1"
    assert p.answer == "1" and p.n_terms == 4


@given(st.lists(st.integers(0, 9), min_size=1, max_size=len(LABELS)))
@settings(max_examples=200, deadline=None)
def test_target_is_the_running_sum(digits):
    p = make_problem(digits)
    steps = p.target_text.split(">")[0]
    assert len(steps) == 3 * len(digits)
    s = 0
    for i, d in enumerate(digits):
        s = (s + d) % 10
        assert steps[3 * i: 3 * i + 3] == f"{LABELS[i]}{d}{s}"
    assert p.answer == str(sum(digits) % 10) == p.target_text[-1]
    codec = CharCodec()
    assert len(codec.encode(p.target_text)) + 1 == response_tokens_for(len(digits))
    assert len(codec.encode_prompt(p.prompt_text)) == prompt_tokens_for(len(digits))


def test_problem_is_deterministic_by_prompt_id(task):
    again = BuiltinTask(TaskConfig(), seed=0)
    for i in (0, 1, 17, 12345):
        assert task.problem(i) == again.problem(i)
        assert task.problem(i, "eval") == again.problem(i, "eval")
    # order of calls does not matter (no shared RNG state)
    a = [task.problem(i) for i in range(20)]
    b = [again.problem(i) for i in reversed(range(20))][::-1]
    assert a == b


def test_problem_is_deterministic_across_processes(task):
    code = ("import json; from asyncopd.task import BuiltinTask, TaskConfig; "
            "t = BuiltinTask(TaskConfig(), seed=0); "
            "print(json.dumps([t.problem(i, s).prompt_text for s in ('train', 'eval') for i in range(30)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    here = [task.problem(i, s).prompt_text for s in ("train", "eval") for i in range(30)]
    assert json.loads(out.stdout) == here


def test_seed_and_split_change_the_stream(task):
    other_seed = BuiltinTask(TaskConfig(), seed=1)
    n = 200
    train = [task.problem(i, "train").digits for i in range(n)]
    evals = [task.problem(i, "eval").digits for i in range(n)]
    reseeded = [other_seed.problem(i, "train").digits for i in range(n)]
    # same id, different split / seed: different problems (short ones may coincide by chance)
    assert sum(a == b for a, b in zip(train, evals)) < n * 0.05
    assert sum(a == b for a, b in zip(train, reseeded)) < n * 0.05
    assert len(set(train) & set(evals)) < n * 0.1
    assert task.eval_problems() == task.problems(task.cfg.eval_prompts, "eval")


def test_negative_prompt_id_rejected(task):
    with pytest.raises(ValueError):
        task.problem(-1)


# ----------------------------------------------------------------------------- grading
def test_checker_accepts_targets(task):
    for p in task.problems(100):
        assert task.is_correct(p, p.target_text)
        assert task.is_correct(p, p.target_text + "<eos>")  # decoded with specials kept
        g = task.grade(p, p.target_text)
        assert g.correct and g.answer_correct and g.well_formed


def test_checker_rejects_corruptions(task):
    rng = random.Random(0)
    for p in task.problems(100):
        t = p.target_text
        digit_pos = [i for i, c in enumerate(t) if c.isdigit()]
        i = rng.choice(digit_pos)
        flipped = t[:i] + str((int(t[i]) + rng.randint(1, 9)) % 10) + t[i + 1:]
        for bad in (flipped, t[:-1], t + "5", t[:-2], "", t.replace(">", "="), t[3:]):
            assert not task.is_correct(p, bad), (t, bad)
        # a wrong intermediate sum with a lucky final answer is still wrong
        assert not task.grade(p, flipped).correct
        assert task.grade(p, flipped).well_formed


def test_chance_level_accuracy_is_zero(task):
    rng = random.Random(1)
    probs = task.problems(500)
    hits = 0
    for p in probs:  # well-formed guesses with random digits
        guess = "".join(f"{LABELS[i]}{rng.randrange(10)}{rng.randrange(10)}" for i in range(p.n_terms))
        guess += f">{rng.randrange(10)}"
        assert task.grade(p, guess).well_formed
        hits += task.is_correct(p, guess)
    assert hits <= 1


# ----------------------------------------------------------------------------- lengths
def test_default_length_distribution(task):
    lengths = task.reference_response_lengths(2000)
    assert min(lengths) <= 9 and max(lengths) >= 40
    mean = sum(lengths) / len(lengths)
    assert 15 <= mean <= 25
    assert abs(mean - task.mean_response_tokens()) < 1.0
    assert set(lengths) <= set(task.response_length_pmf())
    assert abs(sum(task.response_length_pmf().values()) - 1) < 1e-9
    prompts = task.prompt_token_lengths(2000)
    assert abs(sum(prompts) / len(prompts) - task.mean_prompt_tokens()) < 1.0
    assert task.reference_response_lengths(50, seed=0) == lengths[:50]
    assert task.reference_response_lengths(50, seed=7) != lengths[:50]
    # ids are the same prompt ids the trainer uses
    assert lengths[:20] == [response_tokens_for(task.problem(i).n_terms) for i in range(20)]


def test_length_skew_shapes_the_distribution():
    means = [BuiltinTask(TaskConfig(length_skew=s)).mean_response_tokens() for s in (0.0, 0.3, 0.6, 1.0)]
    assert means == sorted(means, reverse=True)
    flat = BuiltinTask(TaskConfig(min_terms=2, max_terms=5, length_skew=0.0)).term_count_pmf
    assert flat == pytest.approx({2: 0.25, 3: 0.25, 4: 0.25, 5: 0.25})
    one = BuiltinTask(TaskConfig(min_terms=4, max_terms=4))
    assert {p.n_terms for p in one.problems(20)} == {4}


def test_config_validation():
    with pytest.raises(ValidationError):
        TaskConfig(min_terms=5, max_terms=3)
    with pytest.raises(ValidationError):
        TaskConfig(max_terms=len(LABELS) + 1)
    TaskConfig(max_terms=len(LABELS))


# ----------------------------------------------------------------------------- codec
def test_codec_round_trip_and_specials(task, tmp_path):
    c = task.codec
    assert isinstance(c, TextCodec)
    assert len({c.pad_id, c.bos_id, c.eos_id}) == 3
    for p in task.problems(50):
        for text in (p.prompt_text, p.target_text):
            ids = c.encode(text)
            assert all(3 <= i < c.vocab_size for i in ids)
            assert c.decode(ids) == text
        assert c.encode_prompt(p.prompt_text)[0] == c.bos_id
        assert c.decode([c.bos_id] + c.encode(p.target_text) + [c.eos_id, c.pad_id]) == p.target_text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        c.encode("a3é")
    with pytest.raises(ValueError):
        c.decode([c.vocab_size])
    c.save(tmp_path)
    assert (tmp_path / CODEC_FILENAME).is_file()
    assert CharCodec.load(tmp_path) == c
    with pytest.raises(FileNotFoundError):
        CharCodec.load(tmp_path / "missing")


def test_task_package_does_not_import_torch():
    code = ("import sys, asyncopd.task, asyncopd.task.builtin, asyncopd.task.codec; "
            "asyncopd.task.BuiltinTask(asyncopd.task.TaskConfig()).problem(0); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
