"""Batched sampling with a KV cache on a plain transformers causal LM (CPU or one GPU).

Behaviour log-probabilities
---------------------------
Every response token ``y_t`` is drawn from the engine's sampling distribution ``mu_t`` (see
:mod:`asyncopd.backends.torch_backend.sampling`): with next-token logits ``z_t``, temperature
``tau`` and nucleus mass ``p``,

    q_t = softmax(z_t / tau),
    N_t = smallest set of most likely tokens (under q_t) whose mass reaches p,
    mu_t(v) = q_t(v) / sum_{u in N_t} q_t(u)   for v in N_t (0 elsewhere),

and ``behaviour_logprobs[t] = log mu_t(y_t)``, the log-probability under exactly the distribution
the token was drawn from (temperature and truncation included). With ``tau = 1, p = 1`` this is
``log_softmax(z_t)[y_t]``, the plain model log-probability. ``z_t`` are the logits computed by the
weights current when ``y_t`` was sampled; ``token_versions[t]`` is that weight version.

Batching
--------
Prompts are left-padded into one batch with an explicit attention mask and explicit position ids
(each row counts positions from its own first real token), so a row's logits do not depend on
what else is in the batch. One batched forward per decode step feeds the last sampled token of
every in-flight row. Rows that finish (EOS, ``max_new_tokens``, eviction) are dropped from the
batch tensors and from the KV cache when the cache supports selecting batch rows; otherwise they
stay in the batch and their outputs are ignored.

``generate`` decodes one wave: every request starts together and the call returns when the
last one ends. ``serve`` batches continuously: requests from a ``RequestSource`` join the
running batch through their own prefill, left-padded into its KV cache (``decode_batch.py``),
in groups: once at least ``min(min_join, slots)`` slots are free. Each step's ended sequences go
to a sink at once, so no slot idles while the longest sequence of a wave finishes. Both run the
same loop (``_decode``). On the built-in task's model, one core, 512 prompts (``max_new_tokens``
64, mean response ~19.5 tokens), continuous batching needed 1.4x (8 slots, ``min_join`` 2) and
1.7x (16 slots, ``min_join`` 4) fewer CPU seconds per sample than waves of the same width. Two
things make it pay: trimming the leading columns no row attends to (without it the attention
width grows with the batch's age: 1.1x), and joining in groups (one prefill per freed slot:
1.2x / 1.3x).

Weight updates in flight
------------------------
Between two decode steps (after a token was sampled for every in-flight row, before the forward
that produces the next logits) the engine calls ``step_hook()`` when one is given and at least
one sequence is still in flight. It returns ``(update_or_None, sample_ids_to_abort)``. Evicted
sequences are returned with ``status="aborted", abort_reason="evict"``. An update is loaded in
place (``load_state_dict``) and ``version`` becomes ``update.version``; then, by
``update.pause_mode``:

- ``keep``: continue from the existing KV cache (keys/values of earlier tokens stay those of the
  old weights; the sample is mixed-version);
- ``recompute``: rebuild the KV cache of every in-flight sequence with a prefill of
  prompt + tokens-so-far under the new weights, then continue;
- ``abort``: return every in-flight sequence at once with ``abort_reason="sync_abort"``.

Finished sequences keep their results in every mode. Aborted results carry the tokens generated
before the abort.

Capture for the estimators that need more than the emitted token (``RolloutCapture``): with
``capture_top_k = K`` the ``K`` most likely ids of ``mu_t`` and ``log mu_t`` at them; with
``capture_mc = M`` the emitted token plus ``M - 1`` independent draws from the same ``mu_t``
(temperature and top-p applied), with ``log mu_t`` at them. The extra draws come from a
second generator, so the emitted tokens are the same with and without capture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch

import numpy as np

from asyncopd.backends.base import (
    GenRequest, GenResult, RequestList, RequestSource, RolloutCapture, StepHook, WeightUpdate, check_sampling_args,
)
from asyncopd.backends.torch_backend import compat
from asyncopd.backends.torch_backend.decode_batch import DecodeBatch, DecodeSeq
from asyncopd.backends.torch_backend.sampling import sample_from_logprobs, sampling_logprobs


class TorchRolloutEngine:
    """Rollout engine over a transformers ``PreTrainedModel`` (implements ``RolloutEngine``).

    Args:
        model: a causal LM; it is moved to ``device`` and put in eval mode.
        eos_id: end-of-sequence id, or several ids; a sampled EOS token ends the sequence and is
            kept in ``response_ids``. ``None``: only ``max_new_tokens`` ends sequences.
        pad_id: id fed at padded positions (never attended to).
        max_new_tokens: most response tokens per sequence.
        temperature, top_p: the sampling distribution (module docstring); ``temperature=0`` is
            greedy decoding with behaviour log-prob 0.
        seed: seeds the engine's own ``torch.Generator``; two engines built with the same seed,
            weights and calls produce the same samples.
        capture_top_k: record the ``K`` most likely ids of the sampling distribution per position (0: no).
        capture_mc: record ``M`` draws per position from the sampling distribution, column 0 the
            emitted token (0: no).
        device: where the model runs.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_id: int | Iterable[int] | None,
        pad_id: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        capture_top_k: int = 0,
        capture_mc: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        check_sampling_args(max_new_tokens, temperature, top_p)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.eval()
        if eos_id is None:
            self.eos_ids: frozenset[int] = frozenset()
        elif isinstance(eos_id, int):
            self.eos_ids = frozenset([int(eos_id)])
        else:
            self.eos_ids = frozenset(int(e) for e in eos_id)
        self.pad_id = int(pad_id)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        if capture_top_k < 0 or capture_mc < 0:
            raise ValueError("capture_top_k and capture_mc must be >= 0")
        vocab = compat.output_vocab_size(self.model)
        if capture_top_k > vocab:
            raise ValueError(f"capture_top_k={capture_top_k} exceeds the vocabulary ({vocab})")
        self.capture_top_k, self.capture_mc = int(capture_top_k), int(capture_mc)
        self.mc_generator = torch.Generator(device=self.device)
        self.mc_generator.manual_seed(self.seed + 7919)  # independent of the emitted tokens' stream
        self.version = 0
        self.load_seconds: dict[int, float] = {}
        # Counters of the most recent ``generate`` call (for calibration and logging).
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ weights
    def set_weights(self, update: WeightUpdate) -> None:
        """Load ``update.state_dict`` now (the engine is idle) and take its version."""
        self._take(update)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights it samples with (the model's own tensors, not copies)."""
        return self.model.state_dict()

    def _take(self, update: WeightUpdate) -> None:
        """Load ``update`` and take its version; ``load_seconds[version]`` records how long
        generation stood still for it (the part of a weight sync that pauses the worker)."""
        t0 = time.perf_counter()
        self._load(update.state_dict)
        self.version = int(update.version)
        self.load_seconds[self.version] = time.perf_counter() - t0

    def _load(self, state_dict: Any) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.model.load_state_dict(dict(state_dict), strict=True)

    # ------------------------------------------------------------------ generation
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        logits, new_cache = compat.model_forward(
            self.model,
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return logits[:, -1, :], new_cache

    def generate(self, requests: list[GenRequest], step_hook: StepHook | None = None) -> list[GenResult]:
        """Generate one response per request as one wave (results in request order); see the
        module docstring."""
        if not requests:
            self.last_stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "recomputes": 0, "seconds": 0.0}
            return []
        ids = [r.sample_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("sample_id values in one generate() call must be unique")
        done: dict[int, GenResult] = {}
        self._decode(RequestList(requests), lambda results: done.update((r.sample_id, r) for r in results),
                     step_hook, slots=len(requests), min_join=1)
        return [done[i] for i in ids]

    def serve(self, source: RequestSource, sink: Callable[[list[GenResult]], None],
              step_hook: StepHook | None = None, *, slots: int, min_join: int = 1) -> None:
        """Continuous batching: keep up to ``slots`` sequences decoding, pass each step's ended
        ones to ``sink`` at once, and admit queued requests into the running batch (one prefill,
        joined to the cache) once at least ``min(min_join, slots)`` slots are free, so that
        sequences join in groups, not one prefill per freed slot. An
        idle engine blocks in ``source.take``; returns once the source is closed and every
        admitted sequence has ended. Where the model's cache cannot take rows mid-flight, new
        requests join only an empty batch (waves)."""
        if slots < 1 or min_join < 1:
            raise ValueError(f"slots and min_join must be >= 1, got {slots} and {min_join}")
        self._decode(source, sink, step_hook, slots=slots, min_join=min_join)

    def _admit(self, new: list[GenRequest], batch: DecodeBatch | None,
               stats: dict[str, int]) -> tuple[DecodeBatch, bool]:
        """Start ``new`` (a new batch, or rows joined to ``batch``); False when they could not join."""
        for r in new:
            if not r.prompt_ids:
                raise ValueError(f"sample {r.sample_id}: empty prompt")
        now = time.time()
        seqs = [DecodeSeq(r, now) for r in new]
        if batch is None:
            return DecodeBatch(seqs, self._forward, self.pad_id, self.device, stats), True
        return batch, batch.join(seqs)

    def _decode(self, source: RequestSource, sink: Callable[[list[GenResult]], None],
                step_hook: Optional[StepHook], *, slots: int, min_join: int) -> None:
        started = time.time()
        batch: DecodeBatch | None = None
        refused: list[GenRequest] = []  # could not join the running batch: they start the next one
        closed = False
        stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "recomputes": 0}
        max_new, eos = self.max_new_tokens, self.eos_ids
        with torch.inference_mode():
            while True:
                # ---- admission: an empty engine waits for work; a running batch takes what is
                # queued once min_join slots are free, if its cache can take rows mid-flight
                if batch is None:
                    new = refused or (None if closed else source.take(slots, True))
                    refused = []
                    if new is None:
                        break
                    batch, _ = self._admit(new, None, stats)
                elif not closed and not refused:
                    free = slots - sum(s.outcome is None for s in batch.seqs)
                    if free >= min(min_join, slots):
                        new = source.take(free, False)
                        if new is None:
                            closed = True
                        elif new:
                            batch, joined = self._admit(new, batch, stats)
                            if not joined:
                                refused = new
                # ---- sample one token for every in-flight row (rows kept in the batch after they
                # ended, when the cache cannot drop rows, are skipped so that the random stream
                # does not depend on whether rows could be dropped)
                seqs = batch.seqs
                live = [r for r, q in enumerate(seqs) if q.outcome is None]
                if len(live) < len(seqs):
                    live_idx = torch.as_tensor(live, dtype=torch.long, device=self.device)
                    step_logits = batch.logits.index_select(0, live_idx)
                else:
                    step_logits = batch.logits
                logp = sampling_logprobs(step_logits, self.temperature, self.top_p)
                sampled = sample_from_logprobs(logp, self.generator)
                tok_logp = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
                top = self._capture_top_k(logp)
                draws = self._capture_mc(logp, sampled)
                if len(live) < len(seqs):
                    tok = torch.full((len(seqs),), self.pad_id, dtype=torch.long, device=self.device)
                    tok[live_idx] = sampled
                else:
                    tok = sampled
                now, version = time.time(), self.version
                for j, (r, t, lp) in enumerate(zip(live, sampled.tolist(), tok_logp.tolist())):
                    q = seqs[r]
                    q.response.append(t)
                    q.logps.append(lp)
                    q.versions.append(version)
                    if top is not None:
                        q.cap_k.append((top[0][j], top[1][j]))
                    if draws is not None:
                        q.cap_mc.append((draws[0][j], draws[1][j]))
                    if t in eos:
                        q.end("finished", "eos", "", now)
                    elif len(q.response) >= max_new:
                        q.end("finished", "length", "", now)
                stats["generated_tokens"] += len(live)

                # ---- between decode steps: evictions and weight updates
                recompute = False
                if step_hook is not None and any(q.outcome is None for q in seqs):
                    update, evict = step_hook()
                    now = time.time()
                    for q in seqs:
                        if q.req.sample_id in (evict or ()):
                            q.end("aborted", "aborted", "evict", now)
                    if update is not None:
                        if update.pause_mode not in ("keep", "recompute", "abort"):
                            raise ValueError(f"unknown pause_mode {update.pause_mode!r}")
                        self._take(update)
                        if update.pause_mode == "abort":
                            for q in seqs:
                                q.end("aborted", "aborted", "sync_abort", now)
                        elif update.pause_mode == "recompute":
                            recompute = True

                # ---- hand over what ended this step; drop it from the batch
                ended = [q for q in seqs if q.outcome is not None and not q.handed]
                for q in ended:
                    q.handed = True
                if ended:
                    sink([self._result(q) for q in ended])
                live = [r for r, q in enumerate(seqs) if q.outcome is None]
                if not live:
                    batch = None
                    continue
                if recompute:
                    if len(live) < len(seqs):
                        batch.seqs = [seqs[r] for r in live]
                    batch.recompute()
                    stats["recomputes"] += 1
                    continue
                if len(live) < len(seqs):
                    dropped, tok = batch.keep(live, tok)
                    if dropped:
                        batch.trim()
                # ---- one decode step for the whole batch
                batch.step(tok)
                stats["decode_steps"] += 1
        self.last_stats = {**{k: float(v) for k, v in stats.items()}, "seconds": time.time() - started}

    def _result(self, q: DecodeSeq) -> GenResult:
        status, finish_reason, abort_reason, at = q.outcome  # type: ignore[misc]
        req = q.req
        return GenResult(
            sample_id=req.sample_id, prompt_id=req.prompt_id, prompt_ids=list(req.prompt_ids),
            response_ids=q.response, behaviour_logprobs=q.logps, token_versions=q.versions,
            started_at=q.started, finished_at=at, status=status,  # type: ignore[arg-type]
            abort_reason=abort_reason, finish_reason=finish_reason,  # type: ignore[arg-type]
            capture=self._assemble(q.cap_k, q.cap_mc))

    # ------------------------------------------------------------------ capture
    def _capture_top_k(self, logp: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.capture_top_k:
            return None
        lp, ids = torch.topk(logp, self.capture_top_k, dim=-1)
        return ids.to(torch.int32).cpu().numpy(), lp.float().cpu().numpy()

    def _capture_mc(self, logp: torch.Tensor, sampled: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.capture_mc:
            return None
        ids = sampled.unsqueeze(-1)
        if self.capture_mc > 1:
            extra = torch.multinomial(logp.exp(), self.capture_mc - 1, replacement=True, generator=self.mc_generator)
            ids = torch.cat([ids, extra], dim=-1)
        return ids.to(torch.int32).cpu().numpy(), logp.gather(-1, ids).float().cpu().numpy()

    def _assemble(self, top: list[tuple[np.ndarray, np.ndarray]],
                  mc: list[tuple[np.ndarray, np.ndarray]]) -> RolloutCapture | None:
        if not (self.capture_top_k or self.capture_mc):
            return None

        def stack(rows: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray]:
            if not rows:
                return np.zeros((0, width), np.int32), np.zeros((0, width), np.float32)
            return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]).astype(np.float32)

        cap = RolloutCapture()
        if self.capture_top_k:
            cap.topk_ids, cap.topk_logprobs = stack(top, self.capture_top_k)
        if self.capture_mc:
            cap.mc_ids, cap.mc_logprobs = stack(mc, self.capture_mc)
        return cap
