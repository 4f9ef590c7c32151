"""The backend factory the Ray actors use: the config's backend names map to real engines."""

from __future__ import annotations

import pytest

from asyncopd.backends.factory import build_rollout_engine, build_teacher_scorer
from asyncopd.backends.torch_backend import TorchRolloutEngine, TorchTeacherScorer
from asyncopd.backends.vllm_backend import vllm_available


@pytest.fixture(scope="module")
def student_dir():
    from asyncopd.models import resolve_model

    return str(resolve_model("builtin-student", progress=False))


def test_torch_backend_builds_real_engines_with_the_capture_settings(student_dir) -> None:
    eng = build_rollout_engine("torch", student_dir, device="cpu", dtype="float32", eos_id=2, pad_id=0,
                               max_new_tokens=4, temperature=1.0, top_p=1.0, seed=0, capture_top_k=3, capture_mc=2)
    assert isinstance(eng, TorchRolloutEngine) and (eng.capture_top_k, eng.capture_mc) == (3, 2)
    sc = build_teacher_scorer("torch", student_dir, device="cpu", dtype="float32", top_k=4, pad_id=0, num_samples=2)
    assert isinstance(sc, TorchTeacherScorer) and sc.num_samples == 2


def test_unknown_and_missing_backends_are_named(student_dir) -> None:
    with pytest.raises(ValueError, match="rollout.backend must be torch or vllm"):
        build_rollout_engine("tgi", student_dir, device="cpu", dtype="float32", eos_id=2, pad_id=0, max_new_tokens=4,
                             temperature=1.0, top_p=1.0, seed=0)
    with pytest.raises(ValueError, match="teacher.backend must be torch or vllm"):
        build_teacher_scorer("tgi", student_dir, device="cpu", dtype="float32", top_k=4, pad_id=0)
    if not vllm_available():
        with pytest.raises(ImportError, match="vllm"):
            build_teacher_scorer("vllm", student_dir, device="cuda:0", dtype="bfloat16", top_k=4, pad_id=0)
