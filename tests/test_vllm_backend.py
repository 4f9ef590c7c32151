"""The vLLM backend without vLLM: the pure conversions (vLLM-shaped fakes), the chunk / weight-sync
loop of VllmRolloutEngine and VllmTeacherScorer against a fake ``vllm`` module, and the import
contract (importing the package never imports vllm; constructors raise ImportError with a hint).

The fake engine is deterministic: after token ``x`` it emits ``(x + 1 + w) % V`` where ``w`` is the
loaded weight "offset"; its logprob dicts hold the top-K ids plus the emitted token, like vLLM's.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest

from asyncopd.backends.base import GenRequest, ScoreRequest, WeightUpdate
from asyncopd.backends.vllm_backend.convert import (
    INSTALL_HINT,
    prompt_logprobs_to_payload,
    request_seed,
    sample_logprobs_to_arrays,
    supports_logprobs_mode,
    topk_from_logprob_dict,
)
from asyncopd.backends.vllm_backend.rollout import SeqState, absorb_chunk, chunk_budget


@dataclass
class Logprob:  # shaped like vllm.logprobs.Logprob
    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


def lpd(pairs):
    """{id: Logprob} from (id, logprob, rank) triples."""
    return {i: Logprob(lp, r) for i, lp, r in pairs}


# ------------------------------------------------------------------ pure conversions
def test_topk_sorted_descending_exactly_k():
    d = lpd([(5, -2.0, 3), (1, -0.5, 1), (9, -7.0, 40), (2, -1.0, 2)])  # 9: the extra actual token
    ids, lps = topk_from_logprob_dict(d, 3)
    assert ids.tolist() == [1, 2, 5] and ids.dtype == np.int32 and lps.dtype == np.float32
    np.testing.assert_allclose(lps, [-0.5, -1.0, -2.0])
    ids, _ = topk_from_logprob_dict(lpd([(4, -1.0, 1), (3, -1.0, 1)]), 2)  # tie: lower id first
    assert ids.tolist() == [3, 4]
    with pytest.raises(ValueError, match="fewer than the k=5"):
        topk_from_logprob_dict(d, 5)


def test_sample_logprobs_to_arrays():
    tokens = [7, 3]
    lps = [lpd([(7, -0.1, 1), (2, -3.0, 2)]),  # sampled token inside the top-2
           lpd([(4, -0.2, 1), (6, -0.9, 2), (3, -4.0, 9)])]  # sampled token as the extra entry
    beh, ids, tl = sample_logprobs_to_arrays(tokens, lps, 2)
    np.testing.assert_allclose(beh, [-0.1, -4.0])
    assert ids.tolist() == [[7, 2], [4, 6]] and ids.shape == tl.shape == (2, 2)
    beh, ids, tl = sample_logprobs_to_arrays(tokens, lps, 0)
    assert ids is None and tl is None and beh.dtype == np.float32
    with pytest.raises(ValueError, match="no log-prob for token 5"):
        sample_logprobs_to_arrays([5], [lpd([(1, -0.1, 1)])], 1)
    with pytest.raises(ValueError, match="logprobs unset"):
        sample_logprobs_to_arrays([5], None, 1)
    beh, ids, _ = sample_logprobs_to_arrays([], None, 3)
    assert beh.shape == (0,) and ids.shape == (0, 3)


def test_prompt_logprobs_to_payload():
    prompt, response = [11, 12, 13], [4, 8]
    plp = [None, lpd([(12, -0.3, 1)]), lpd([(13, -0.2, 1)]),
           lpd([(4, -0.5, 1), (1, -1.0, 2), (2, -2.0, 3)]),  # x_3 = 4 inside the top-3
           lpd([(0, -0.1, 1), (1, -2.5, 2), (2, -3.0, 3), (8, -6.0, 17)])]  # x_4 = 8: extra 4th entry
    p = prompt_logprobs_to_payload(3, len(prompt), response, plp, 3)
    assert p.sample_id == 3 and p.topk_ids.tolist() == [[4, 1, 2], [0, 1, 2]]
    np.testing.assert_allclose(p.topk_logprobs, [[-0.5, -1.0, -2.0], [-0.1, -2.5, -3.0]])
    np.testing.assert_allclose(p.sampled_logprob, [-0.5, -6.0])
    assert (p.topk_ids.dtype, p.topk_logprobs.dtype, p.sampled_logprob.dtype) == (np.int32, np.float32, np.float32)
    empty = prompt_logprobs_to_payload(4, 3, [], None, 3)
    assert empty.topk_ids.shape == (0, 3) and empty.sampled_logprob.shape == (0,)
    with pytest.raises(ValueError, match="need 5"):
        prompt_logprobs_to_payload(3, 3, response, plp[:4], 3)


def test_request_seed_and_logprobs_mode_probe():
    assert request_seed(0, 5, 2) == request_seed(0, 5, 2)
    seeds = {request_seed(s, i, c) for s in range(2) for i in range(20) for c in range(5)}
    assert len(seeds) == 200 and all(0 <= x < 2**31 - 1 for x in seeds)

    @dataclasses.dataclass
    class New:
        logprobs_mode: str = "raw_logprobs"

    @dataclasses.dataclass
    class Old:
        max_logprobs: int = 20

    assert supports_logprobs_mode(New) and not supports_logprobs_mode(Old) and not supports_logprobs_mode(None)


def test_absorb_chunk_end_conditions():
    seq = SeqState(GenRequest(0, 0, [1]))
    d = [lpd([(t, -0.5, 1)]) for t in (2, 3, 9, 4)]
    kept = absorb_chunk(seq, [2, 3, 9, 4], d, "stop", 4, version=3, eos_ids=frozenset({9}), max_new_tokens=10,
                        top_k=1, now=1.0)
    assert kept == 3 and seq.response == [2, 3, 9] and seq.versions == [3, 3, 3]
    assert seq.outcome == ("finished", "eos", "", 1.0)
    seq = SeqState(GenRequest(0, 0, [1]))
    absorb_chunk(seq, [2, 3], d[:2], "length", 2, version=0, eos_ids=frozenset(), max_new_tokens=2, top_k=0, now=2.0)
    assert seq.outcome[:2] == ("finished", "length")
    seq = SeqState(GenRequest(0, 0, [1]))  # engine stopped early (max_model_len): length
    absorb_chunk(seq, [2], d[:1], "length", 4, version=0, eos_ids=frozenset(), max_new_tokens=8, top_k=0, now=0.0)
    assert seq.outcome[:2] == ("finished", "length")
    seq = SeqState(GenRequest(0, 0, [1]))  # a full chunk, not finished
    absorb_chunk(seq, [2, 3], d[:2], "length", 2, version=0, eos_ids=frozenset(), max_new_tokens=8, top_k=0, now=0.0)
    assert seq.live and chunk_budget(len(seq.response), 8, 4) == 4 and chunk_budget(6, 8, 4) == 2


# ------------------------------------------------------------------ import contract
def test_import_does_not_import_vllm(monkeypatch):
    asked: list[str] = []

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name == "vllm" or name.startswith("vllm."):
                asked.append(name)
            return None

    for mod in [m for m in sys.modules if m.startswith("asyncopd.backends.vllm_backend")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Recorder(), *sys.meta_path])
    pkg = importlib.import_module("asyncopd.backends.vllm_backend")
    assert pkg.VllmRolloutEngine.__name__ == "VllmRolloutEngine" and pkg.VllmTeacherScorer is not None
    assert asked == [] and "vllm" not in sys.modules


def test_constructors_raise_importerror_with_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    from asyncopd.backends.vllm_backend import (
        VllmRolloutEngine,
        VllmTeacherScorer,
        vllm_available,
    )

    assert not vllm_available()
    with pytest.raises(ImportError, match=r"pip install 'asyncopd\[vllm\]' on a CUDA machine") as e:
        VllmRolloutEngine("m", eos_id=1, pad_id=0, max_new_tokens=4)
    assert "has not been run in this project's CI" in str(e.value) and str(e.value) == INSTALL_HINT
    with pytest.raises(ImportError, match="asyncopd"):
        VllmTeacherScorer("m", top_k=2, pad_id=0)


# ------------------------------------------------------------------ a fake vllm module
V = 10


class FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@dataclasses.dataclass
class FakeEngineArgs:
    logprobs_mode: str = "raw_logprobs"


class FakeModel:
    def __init__(self):
        self.w = 0
        self.loads = 0

    def load_weights(self, weights):
        self.w = int(dict(weights)["w"])
        self.loads += 1


class FakeLLM:
    def __init__(self, **kw):
        self.kwargs, self.model, self.calls, self.resets = kw, FakeModel(), [], 0
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(get_vocab_size=lambda: V))

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        # (a stand-in for vLLM's worker: reload_weights(weights_iterator, is_checkpoint_format))
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        self.model.load_weights(kwargs["weights_iterator"])
        return [None]

    def reset_prefix_cache(self):
        self.resets += 1
        return True

    def _dist(self, x):  # top entries after token x: emitted (x+1+w) first
        nxt = (x + 1 + self.model.w) % V
        return nxt, {(nxt + m) % V: Logprob(-0.1 - m, m + 1) for m in range(4)}

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.calls.append(([list(p["prompt_token_ids"]) for p in prompts], params))
        outs = []
        for p, sp in zip(prompts, params):
            ids = list(p["prompt_token_ids"])
            plp = None
            if getattr(sp, "prompt_logprobs", None):
                plp = [None] + [{**{(j + m) % V: Logprob(-0.5 * (m + 1), m + 1) for m in range(sp.prompt_logprobs)},
                                 **({ids[j]: Logprob(-9.0, 99)} if all((j + m) % V != ids[j]
                                                                       for m in range(sp.prompt_logprobs)) else {})}
                                for j in range(1, len(ids))]
            toks, lps, reason, x = [], [], "length", ids[-1]
            for _ in range(sp.max_tokens):
                x, d = self._dist(x)
                toks.append(x)
                lps.append(d)
                if x in (getattr(sp, "stop_token_ids", None) or []):
                    reason = "stop"
                    break
            outs.append(SimpleNamespace(prompt_logprobs=plp, num_cached_tokens=0,
                                        outputs=[SimpleNamespace(token_ids=toks, logprobs=lps, finish_reason=reason)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    for var in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_RAY_BUNDLE_INDICES", "VLLM_RAY_PER_WORKER_GPUS"):
        monkeypatch.delenv(var, raising=False)  # (the engines set them; undone after the test)
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams, mod.EngineArgs, mod.__version__ = FakeLLM, FakeSamplingParams, FakeEngineArgs, "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def engine(**kw):
    from asyncopd.backends.vllm_backend import VllmRolloutEngine

    args = dict(eos_id=9, pad_id=0, max_new_tokens=6, temperature=0.7, top_p=0.9, seed=1, sync_chunk_tokens=2)
    return VllmRolloutEngine("fake-model", **{**args, **kw})


def test_engine_args_and_single_call_without_hook(fake_vllm):
    eng = engine(top_k_capture=3)
    kw = eng.llm.kwargs
    assert kw["logprobs_mode"] == "processed_logprobs" and eng.logprobs_mode == "processed_logprobs"
    assert kw["enable_prefix_caching"] and kw["max_logprobs"] >= 3 and kw["skip_tokenizer_init"]
    res = eng.generate([GenRequest(10, 0, [1]), GenRequest(11, 0, [5])])
    assert len(eng.llm.calls) == 1  # no hook: one LLM.generate for whole responses
    sp = eng.llm.calls[0][1][0]
    assert (sp.n, sp.max_tokens, sp.logprobs, sp.stop_token_ids, sp.ignore_eos, sp.temperature, sp.top_p) == \
        (1, 6, 3, [9], True, 0.7, 0.9)
    assert eng.llm.calls[0][1][0].seed != eng.llm.calls[0][1][1].seed
    a, b = res
    assert a.response_ids == [2, 3, 4, 5, 6, 7] and a.finish_reason == "length" and a.status == "finished"
    assert b.response_ids == [6, 7, 8, 9] and b.finish_reason == "eos"
    assert a.behaviour_logprobs == pytest.approx([-0.1] * 6) and a.token_versions == [0] * 6
    assert a.capture.topk_ids.shape == (6, 3) and a.capture.topk_ids[0].tolist() == [2, 3, 4]
    assert b.capture.topk_logprobs.shape == (4, 3)
    assert engine(capture_top_k=2).top_k_capture == 2  # the torch engine's argument name
    with pytest.raises(ValueError, match="capture_mc"):
        engine(capture_mc=4)


def test_chunked_generation_with_weight_update(fake_vllm):
    eng = engine()
    calls = []

    def hook():
        calls.append(1)
        if len(calls) == 1:
            return WeightUpdate(version=4, state_dict={"w": 1}, pause_mode="keep"), set()
        return None, set()

    a, = eng.generate([GenRequest(7, 3, [1])], step_hook=hook)
    # chunk 1 (w=0): 2, 3; update -> w=1: 5, 7; then 9 = EOS
    assert a.response_ids == [2, 3, 5, 7, 9] and a.finish_reason == "eos"
    assert a.token_versions == [0, 0, 4, 4, 4] and a.spans() == ((0, 2), (4, 3))
    assert eng.version == 4 and eng.llm.model.loads == 1 and eng.llm.resets == 1
    submitted = [c[0][0] for c in eng.llm.calls]
    assert submitted == [[1], [1, 2, 3], [1, 2, 3, 5, 7]]  # prompt + tokens so far
    assert [c[1][0].max_tokens for c in eng.llm.calls] == [2, 2, 2]
    assert eng.last_stats["recomputes"] == 1 and eng.last_stats["chunks"] == 3
    assert a.started_at <= a.finished_at


def test_abort_and_evict(fake_vllm):
    eng = engine(max_new_tokens=8)
    reqs = [GenRequest(1, 0, [0]), GenRequest(2, 0, [4])]
    a, b = eng.generate(reqs, step_hook=lambda: (None, {2}))
    assert b.status == "aborted" and b.abort_reason == "evict" and b.response_ids == [5, 6]
    assert a.status == "finished" and a.response_ids == [1, 2, 3, 4, 5, 6, 7, 8] and a.finish_reason == "length"
    eng2 = engine(max_new_tokens=8)
    res = eng2.generate(reqs, step_hook=lambda: (WeightUpdate(2, {"w": 0}, "abort"), set()))
    assert [r.abort_reason for r in res] == ["sync_abort", "sync_abort"] and eng2.version == 2
    assert all(len(r.response_ids) == 2 and r.finish_reason == "aborted" for r in res)
    with pytest.raises(ValueError, match="unknown pause_mode"):
        engine().generate(reqs, step_hook=lambda: (WeightUpdate(1, {"w": 0}, "bogus"), set()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        eng.generate([GenRequest(1, 0, [0]), GenRequest(1, 0, [0])])
    assert eng.generate([]) == []


def test_set_weights_and_raw_mode_warning(fake_vllm, caplog):
    del fake_vllm.EngineArgs  # an older vLLM without logprobs_mode
    with caplog.at_level("WARNING"):
        eng = engine()
    assert eng.logprobs_mode == "raw_logprobs" and "logprobs_mode" not in eng.llm.kwargs
    assert "untempered" in caplog.text
    eng.set_weights(WeightUpdate(version=9, state_dict={"w": 2}))
    assert eng.version == 9 and eng.llm.model.w == 2 and eng.llm.resets == 1


def test_teacher_scorer(fake_vllm):
    from asyncopd.backends.vllm_backend import VllmTeacherScorer

    sc = VllmTeacherScorer("fake-teacher", top_k=3, pad_id=0)
    assert sc.llm.kwargs["max_logprobs"] >= 3 and not sc.llm.kwargs["enable_prefix_caching"]
    items = [ScoreRequest(1, [2, 3], [4, 0]), ScoreRequest(2, [5], []), ScoreRequest(3, [1], [7])]
    p1, p2, p3 = sc.score(items)
    assert len(sc.llm.calls) == 1 and sc.llm.calls[0][0] == [[2, 3, 4, 0], [1, 7]]
    sp = sc.llm.calls[0][1][0]
    assert (sp.max_tokens, sp.prompt_logprobs, sp.temperature) == (1, 3, 1.0)
    # position j of x holds ids j, j+1, j+2 with -0.5, -1.0, -1.5, plus x_j at -9 when outside them
    assert p1.topk_ids.tolist() == [[2, 3, 4], [3, 4, 5]] and p1.sampled_logprob.tolist() == [-1.5, -9.0]
    assert p2.topk_ids.shape == (0, 3) and p3.topk_ids.tolist() == [[1, 2, 3]]
    assert p3.sampled_logprob.tolist() == [-9.0] and [p.sample_id for p in (p1, p2, p3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="query_ids"):
        sc.score([ScoreRequest(1, [2], [3], query_ids=np.zeros((1, 2), np.int32))])
    with pytest.raises(ValueError, match="num_samples"):
        VllmTeacherScorer("fake-teacher", top_k=3, pad_id=0, num_samples=4)
    with pytest.raises(ValueError, match="exceeds the teacher's vocabulary"):
        VllmTeacherScorer("fake-teacher", top_k=V + 1, pad_id=0)


def test_weight_loading_needs_collective_rpc():
    from asyncopd.backends.vllm_backend.weights import load_weights_into_llm

    with pytest.raises(RuntimeError, match="vLLM 0.1.2: vllm.LLM has no collective_rpc"):
        load_weights_into_llm(SimpleNamespace(), {"w": 1}, "0.1.2")
