"""The learner: one AdamW update per batch of scored samples, with any OPD estimator.

Loss: the per-position loss ``l_t`` of the configured estimator (``algorithm.loss``; the math of
each is in ``asyncopd/losses/<name>.py``, the default is forward KL on the teacher's top-k,
``l_t = sum_{v in S_T(t)} p_T(v) (log p_T(v) - log pi_theta(v))``), computed from the item's
teacher-score cache and rollout capture; the batch loss is the mean of ``l_t`` over all response
tokens of the whole batch. PG estimators recompute ``log pi_theta`` of the sampled ids here, at
learner time (the "online" advantage uses it). With gradient accumulation each micro-batch contributes
``sum of its l_t / (tokens in the whole batch)``, so the accumulated gradient equals the gradient of
the whole-batch token mean whatever the micro-batch size.

Student log-probs come from one forward pass over ``prompt + response`` (right-padded, attention
mask; positions from 0 per row): the logits at position ``P + t - 1`` give ``log pi_theta`` for
response token ``t``. The model runs in eval mode (dropout off) so that these log-probs are the same
function of the weights as the rollout's behaviour log-probs.

Data parallelism (``parallel``, ``data_parallel.py``): each rank passes its shard of the batch
and the whole batch's token count ``total_tokens``; the loss is scaled so that the ranks' averaged
gradient is the whole batch's, and the metrics are summed over the ranks, so every rank reports
what a single device would.

Versions: ``version`` counts applied updates; ``train_step`` turns ``version`` into
``version + 1``. The staleness of a token sampled under version ``g`` and consumed by that update is
``version - g`` (reported in the metrics).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch

from asyncopd.backends.base import TrainItem, TrainMetrics
from asyncopd.backends.torch_backend import compat
from asyncopd.backends.torch_backend.batching import pack
from asyncopd.backends.torch_backend.data_parallel import load_named_optimizer_state, named_optimizer_state
from asyncopd.config.algorithm import AlgorithmConfig
from asyncopd.losses.estimators import per_token_loss


class TorchLearner:
    """``Learner`` over a transformers causal LM (implements the ``Learner`` protocol).

    Args:
        model: the student; moved to ``device``; trained in place.
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decoupled weight decay.
        grad_clip: clip the global grad norm to this value (``<= 0`` or ``inf``: no clipping).
        micro_batch_size: items per forward/backward (gradient accumulation inside a step).
        warmup_steps: linear warm-up: update ``s`` (0-based) uses ``lr * min(1, (s + 1) / warmup_steps)``.
        decay_steps: with ``> 0``, after the warm-up the rate follows a half cosine from ``lr`` down to
            ``lr * min_lr_ratio`` at update ``decay_steps`` (and stays there); 0: constant.
        min_lr_ratio: the floor of the cosine decay, as a fraction of ``lr``.
        device: where the model trains.
        betas, eps: AdamW hyper-parameters.
        algorithm: the estimator and its options (default: forward KL on the teacher's top-k).
        parallel: this rank's ``DataParallel`` view when the learner runs on several ranks.
    """

    def __init__(
        self,
        model: Any,
        *,
        lr: float,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        micro_batch_size: int,
        warmup_steps: int = 0,
        decay_steps: int = 0,
        min_lr_ratio: float = 0.1,
        device: str | torch.device = "cpu",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        algorithm: AlgorithmConfig | None = None,
        parallel: Any = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.algorithm = algorithm or AlgorithmConfig()
        self.device = torch.device(device)
        self.model = model.to(self.device)  # the unwrapped module (names, weights, checkpoints)
        self.model.eval()  # dropout off; gradients still flow
        self.parallel = parallel
        self.wrapped = parallel.wrap(self.model) if parallel is not None else self.model  # forward/backward
        self.base_lr = float(lr)
        self.grad_clip = float(grad_clip)
        self.micro_batch_size = int(micro_batch_size)
        self.warmup_steps = int(warmup_steps)
        if decay_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError("decay_steps must be >= 0 and min_lr_ratio in [0, 1]")
        self.decay_steps, self.min_lr_ratio = int(decay_steps), float(min_lr_ratio)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.base_lr, weight_decay=float(weight_decay), betas=betas, eps=eps)
        self.version = 0

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based; the update that produces version ``step + 1``)::

            warm-up  (s < W):        lr * (s + 1) / W
            cosine   (W <= s < D):   lr * (m + (1 - m) * (1 + cos(pi * (s - W) / (D - W))) / 2)
            after D:                 lr * m          (m = min_lr_ratio; without decay: lr)
        """
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.decay_steps <= self.warmup_steps:
            return self.base_lr
        frac = min(1.0, (step - self.warmup_steps) / (self.decay_steps - self.warmup_steps))
        m = self.min_lr_ratio
        return self.base_lr * (m + (1 - m) * (1 + math.cos(math.pi * frac)) / 2)

    # ------------------------------------------------------------------ training
    def _micro_batch_loss(self, items: list[TrainItem], total_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over the micro-batch's response tokens of ``l_t``, divided by ``total_tokens``."""
        dev = self.device
        packed = pack(items, self.algorithm.spec)
        tb = packed.tokens.to(dev)
        b, t_max = tb.valid.shape
        width = packed.input_ids.shape[1]
        keep = width - min(len(it.prompt_ids) for it in items) + 1
        logits, _ = compat.model_forward(self.wrapped, input_ids=packed.input_ids.to(dev),
                                         attention_mask=packed.attention_mask.to(dev), logits_to_keep=keep)
        offset = width - logits.shape[1]
        pos_rel = (packed.positions - offset).clamp(min=0).to(dev)
        resp_logits = logits.gather(1, pos_rel.unsqueeze(-1).expand(b, t_max, logits.shape[-1]))  # [b, T, V]
        student_logp = torch.log_softmax(resp_logits.float(), dim=-1)
        per_token, diag = per_token_loss(student_logp, tb, self.algorithm)
        valid = tb.valid
        loss = torch.where(valid, per_token, torch.zeros_like(per_token)).sum() / total_tokens
        if self.parallel is not None:
            loss = loss * self.parallel.loss_scale

        with torch.no_grad():
            def tsum(x: torch.Tensor) -> float:
                return float(torch.where(valid, x, torch.zeros_like(x)).sum())

            s_sampled = student_logp.gather(-1, tb.targets.unsqueeze(-1)).squeeze(-1)
            s_topk = student_logp.gather(-1, tb.teacher_topk_ids)
            finite = torch.isfinite(tb.teacher_topk_logp)
            t_mass = torch.where(finite, tb.teacher_topk_logp.exp(), torch.zeros_like(s_topk)).sum(-1)
            s_mass = torch.where(finite, s_topk.exp(), torch.zeros_like(s_topk)).sum(-1)
            agree = (student_logp.argmax(-1) == tb.teacher_topk_ids[..., 0]).float()
            sums = {
                "teacher_topk_mass": tsum(t_mass),
                "student_topk_mass": tsum(s_mass),
                "student_logprob": tsum(s_sampled),
                "behaviour_logprob": tsum(tb.behaviour_logp),
                "teacher_logprob": tsum(tb.teacher_sampled_logp),
                "logprob_diff_abs": tsum((s_sampled - tb.behaviour_logp).abs()),
                "top1_agreement": tsum(agree),
                **{f"{k}_mean": tsum(v) for k, v in diag.items()},
            }
        return loss, sums

    def accumulate_gradients(self, batch: list[TrainItem],
                             total_tokens: int | None = None) -> tuple[float, int, dict[str, float], int]:
        """Forward/backward over ``batch`` in micro-batches, adding the gradient of the whole-batch
        token-mean loss to ``.grad`` (no optimizer step, no zeroing). ``total_tokens``: the
        response tokens of the whole batch when ``batch`` is one rank's shard (default: its own).

        Returns ``(loss, tokens, sums, micro_batches)``: this batch's share of the whole-batch
        token-mean loss, its number of response tokens, and token sums of the diagnostic
        quantities (see ``train_step``).
        """
        for it in batch:
            t = len(it.response_ids)
            pay = it.teacher
            if pay.topk_ids.ndim != 2 or pay.topk_ids.shape != pay.topk_logprobs.shape or pay.topk_ids.shape[0] != t:
                raise ValueError(
                    f"sample {pay.sample_id}: teacher payload has shape {tuple(pay.topk_ids.shape)} / "
                    f"{tuple(pay.topk_logprobs.shape)}, response has {t} tokens"
                )
        tokens = sum(len(it.response_ids) for it in batch)
        total_tokens = tokens if total_tokens is None else int(total_tokens)
        loss_value = 0.0
        sums: dict[str, float] = {}
        scored = [it for it in batch if len(it.response_ids) > 0]
        chunks = [scored[s : s + self.micro_batch_size] for s in range(0, len(scored), self.micro_batch_size)]
        scale = self.parallel.loss_scale if self.parallel is not None else 1.0
        for i, chunk in enumerate(chunks):
            with self._accumulating(last=i == len(chunks) - 1):
                loss, chunk_sums = self._micro_batch_loss(chunk, max(total_tokens, 1))
                loss.backward()
            loss_value += float(loss.detach()) / scale
            for key, val in chunk_sums.items():
                sums[key] = sums.get(key, 0.0) + val
        if not chunks and self.parallel is not None:
            self._null_backward()  # the reduction is collective: take part with a zero gradient
        return loss_value, tokens, sums, len(chunks)

    def _accumulating(self, last: bool) -> Any:
        return self.parallel.accumulating(self.wrapped, last) if self.parallel is not None else contextlib.nullcontext()

    def _null_backward(self) -> None:
        """A forward/backward of weight zero over one token (a data-parallel rank with no samples)."""
        ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        logits, _ = compat.model_forward(self.wrapped, input_ids=ids, attention_mask=torch.ones_like(ids))
        (logits.float().sum() * 0.0).backward()

    def train_step(self, batch: list[TrainItem], total_tokens: int | None = None) -> TrainMetrics:
        """One AdamW update on ``batch`` (token-mean loss over the whole batch); ``version += 1``.
        With data parallelism ``batch`` is this rank's shard and ``total_tokens`` the whole batch's.

        Metrics: ``loss`` (the whole-batch token mean, before the update), ``grad_norm`` (global L2
        norm before clipping), ``lr``, ``tokens``; ``extra``: token means of the teacher's top-k
        mass, the student's mass on the teacher's top-k, log-probs of the sampled tokens (student now,
        behaviour, teacher), ``|log pi_theta - log mu|`` at the sampled tokens, the student/teacher
        top-1 agreement, token-weighted staleness (mean, max), ``micro_batches``, ``step_seconds``,
        ``teacher_cache_bytes`` and ``rollout_capture_bytes`` (what the batch carried), and for PG
        estimators ``kept_mean`` (share of ids the stabiliser kept) and ``ratio_mean``. With data
        parallelism every quantity is the whole batch's (summed over the ranks; ``micro_batches``
        counts those of every rank).
        """
        if not batch and self.parallel is None:
            raise ValueError("train_step needs at least one item")
        t0 = time.time()
        step = self.version
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, tokens, sums, micro_batches = self.accumulate_gradients(batch, total_tokens)
        grad_norm = self._clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1

        staleness = [step - v for it in batch for v in it.token_versions]
        keys = sorted(sums) if self.parallel is None else self.parallel.union(list(sums))
        local = [loss_value, float(tokens), float(micro_batches), float(len(batch)), float(sum(staleness)),
                 float(len(staleness)), float(sum(it.teacher.nbytes for it in batch)),
                 float(sum(it.capture.nbytes for it in batch if it.capture is not None)), *(sums.get(k, 0.0) for k in keys)]
        stale_max = float(max(staleness)) if staleness else 0.0
        if self.parallel is not None:
            local, stale_max = self.parallel.sum(local), self.parallel.max(stale_max)
        loss_value, tokens_f, mb, samples, stale_sum, stale_n, cache_bytes, capture_bytes = local[:8]
        total = int(round(tokens_f))
        extra = {key: val / max(total, 1) for key, val in zip(keys, local[8:])}
        extra["staleness_mean"] = stale_sum / stale_n if stale_n else 0.0
        extra["staleness_max"] = stale_max
        extra["micro_batches"] = mb
        extra["teacher_cache_bytes"] = cache_bytes  # the finite cache this step read
        extra["rollout_capture_bytes"] = capture_bytes
        extra["samples"] = samples
        extra["step_seconds"] = time.time() - t0
        return TrainMetrics(loss=loss_value, grad_norm=grad_norm, lr=lr, tokens=total, extra=extra)

    def _clip(self) -> float:
        grads = [p for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
        full = getattr(norm, "full_tensor", None)  # FSDP: a replicated DTensor
        return float(full() if full is not None else norm)

    # ------------------------------------------------------------------ weights and checkpoints
    def weights_for_sync(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of every entry of the model's ``state_dict`` (safe to ship and to
        mutate: they share no storage with the model). Data parallel: every rank calls it (FSDP
        gathers the shards); rank 0 gets the full state, the others ``{}``."""
        if self.parallel is not None:
            return self.parallel.full_weights(self.model)
        return {name: t.detach().to("cpu", copy=True) for name, t in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model weights (CPU copies), optimizer state keyed by
        parameter name (whatever the number of ranks or the strategy, so a checkpoint resumes on
        any), version. Data parallel: every rank calls it; rank 0's is the full state.

        The optimizer entry references live state tensors on a single device: serialise it
        (``torch.save``) or deep-copy it before training on."""
        if self.parallel is not None:
            optim = self.parallel.full_optimizer(self.model, self.optimizer)
        else:
            optim = named_optimizer_state(self.model, self.optimizer)
        return {"model": self.weights_for_sync(), "optimizer": optim, "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``state_dict()``'s output (also one written with another number of ranks, and the
        index-keyed optimizer state of older checkpoints on a single device). Data parallel:
        every rank calls it; only rank 0's ``state`` is read, the others may pass ``{}``."""
        if self.parallel is not None:
            self.parallel.load_full(self.model, self.optimizer, state.get("model", {}), state.get("optimizer", {}))
            self.version = int(self.parallel.max(float(state.get("version", -1))))
            return
        with torch.no_grad():
            self.model.load_state_dict(state["model"], strict=True)
        load_named_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.version = int(state["version"])
