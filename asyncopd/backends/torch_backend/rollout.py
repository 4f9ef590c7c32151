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
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch

import numpy as np

from asyncopd.backends.base import (
    GenRequest, GenResult, RolloutCapture, StepHook, WeightUpdate, check_sampling_args,
)
from asyncopd.backends.torch_backend import compat
from asyncopd.backends.torch_backend.sampling import sample_from_logprobs, sampling_logprobs


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` for ``seqs``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


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
        """Generate one response per request (results in request order); see the module docstring."""
        if not requests:
            self.last_stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "recomputes": 0, "seconds": 0.0}
            return []
        ids = [r.sample_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("sample_id values in one generate() call must be unique")
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"sample {r.sample_id}: empty prompt")
        with torch.inference_mode():
            return self._generate(requests, step_hook)

    def _generate(self, requests: list[GenRequest], step_hook: Optional[StepHook]) -> list[GenResult]:
        started = time.time()
        n = len(requests)
        index_of = {r.sample_id: i for i, r in enumerate(requests)}
        prompts = [list(r.prompt_ids) for r in requests]
        responses: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        versions: list[list[int]] = [[] for _ in range(n)]
        cap_k: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]  # per token: (ids, log mu)
        cap_mc: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n)]
        outcome: list[Optional[tuple[str, str, str, float]]] = [None] * n  # status, finish, abort, time
        stats = {"decode_steps": 0, "generated_tokens": 0, "prefill_tokens": 0, "recomputes": 0}

        def finish(i: int, status: str, finish_reason: str, abort_reason: str, at: float) -> None:
            if outcome[i] is None:
                outcome[i] = (status, finish_reason, abort_reason, at)

        def prefill(rows: list[int]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
            seqs = [prompts[i] + responses[i] for i in rows]
            tok, mask, pos = _left_pad(seqs, self.pad_id, self.device)
            stats["prefill_tokens"] += sum(len(s) for s in seqs)
            logits, cache = self._forward(tok, mask, pos, None)
            return logits, cache, mask, pos[:, -1] + 1

        rows = list(range(n))  # batch row r holds sequence rows[r]
        next_logits, cache, mask, next_pos = prefill(rows)
        max_new = self.max_new_tokens
        eos = self.eos_ids
        while True:
            # ---- sample one token for every in-flight row (rows kept in the batch after they
            # finished, when the cache cannot drop rows, are skipped so that the random stream
            # does not depend on whether rows could be dropped)
            live = [r for r, i in enumerate(rows) if outcome[i] is None]
            if len(live) < len(rows):
                live_idx = torch.as_tensor(live, dtype=torch.long, device=self.device)
                step_logits = next_logits.index_select(0, live_idx)
            else:
                step_logits = next_logits
            logp = sampling_logprobs(step_logits, self.temperature, self.top_p)
            sampled = sample_from_logprobs(logp, self.generator)
            tok_logp = logp.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
            top = self._capture_top_k(logp)
            draws = self._capture_mc(logp, sampled)
            if len(live) < len(rows):
                tok = torch.full((len(rows),), self.pad_id, dtype=torch.long, device=self.device)
                tok[live_idx] = sampled
            else:
                tok = sampled
            now = time.time()
            version = self.version
            for j, (r, t, lp) in enumerate(zip(live, sampled.tolist(), tok_logp.tolist())):
                i = rows[r]
                responses[i].append(t)
                logps[i].append(lp)
                versions[i].append(version)
                if top is not None:
                    cap_k[i].append((top[0][j], top[1][j]))
                if draws is not None:
                    cap_mc[i].append((draws[0][j], draws[1][j]))
                stats["generated_tokens"] += 1
                if t in eos:
                    finish(i, "finished", "eos", "", now)
                elif len(responses[i]) >= max_new:
                    finish(i, "finished", "length", "", now)

            # ---- between decode steps: evictions and weight updates
            recompute = False
            if step_hook is not None and any(outcome[i] is None for i in rows):
                update, evict = step_hook()
                now = time.time()
                for sid in evict or ():
                    i = index_of.get(sid)
                    if i is not None:
                        finish(i, "aborted", "aborted", "evict", now)
                if update is not None:
                    if update.pause_mode not in ("keep", "recompute", "abort"):
                        raise ValueError(f"unknown pause_mode {update.pause_mode!r}")
                    self._take(update)
                    if update.pause_mode == "abort":
                        for i in rows:
                            finish(i, "aborted", "aborted", "sync_abort", now)
                    elif update.pause_mode == "recompute":
                        recompute = True

            live = [r for r, i in enumerate(rows) if outcome[i] is None]
            if not live:
                break
            if recompute:
                rows = [rows[r] for r in live]
                next_logits, cache, mask, next_pos = prefill(rows)
                stats["recomputes"] += 1
                continue
            if len(live) < len(rows):
                keep = torch.as_tensor(live, dtype=torch.long, device=self.device)
                if compat.cache_select_rows(cache, keep):
                    rows = [rows[r] for r in live]
                    tok, mask, next_pos = tok[keep], mask[keep], next_pos[keep]
            # ---- one decode step for the whole batch
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            next_logits, cache = self._forward(tok.unsqueeze(-1), mask, next_pos.unsqueeze(-1), cache)
            next_pos = next_pos + 1
            stats["decode_steps"] += 1

        self.last_stats = {**{k: float(v) for k, v in stats.items()}, "seconds": time.time() - started}
        results = []
        for i, req in enumerate(requests):
            status, finish_reason, abort_reason, at = outcome[i]  # type: ignore[misc]
            results.append(
                GenResult(
                    sample_id=req.sample_id,
                    prompt_id=req.prompt_id,
                    prompt_ids=list(req.prompt_ids),
                    response_ids=responses[i],
                    behaviour_logprobs=logps[i],
                    token_versions=versions[i],
                    started_at=started,
                    finished_at=at,
                    status=status,  # type: ignore[arg-type]
                    abort_reason=abort_reason,
                    finish_reason=finish_reason,  # type: ignore[arg-type]
                    capture=self._assemble(cap_k[i], cap_mc[i]),
                )
            )
        return results

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
