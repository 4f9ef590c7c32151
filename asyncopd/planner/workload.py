"""What the planner needs to know about the workload, read once from the config.

The models (``asyncopd.catalog`` descriptions of the student and the teacher), the batch
shapes, and the token counts the memory model and the throughput bounds use:

- ``prompt_tokens``: ``sim.prompt_tokens_mean``, else the task's mean prompt;
- ``response_mean`` and ``response_batch_max``: from ``n`` response lengths drawn with the
  simulator's own ``LengthModel`` (same distribution, same clipping): the mean, and the mean
  over batches of ``B`` draws of the longest one (what a synchronous step waits for);
- ``response_limit``: the longest response possible (``rollout.max_new_tokens``, or the
  distribution's ``max`` when smaller);
- per-token payloads (bytes): the teacher-score cache entry of one position (top-k ids +
  log-probs: 8 bytes per pair, the sampled token's log-prob: 4, ids the student chose: 8 per
  pair, teacher draws: 8 per pair, a full row: 4 V) and the rollout capture (behaviour
  log-prob 4, student top-K or M draws: 8 per pair), as ``TeacherPayload.nbytes`` and
  ``RolloutCapture.nbytes`` count them.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncopd.catalog import ModelDesc, model_desc_for
from asyncopd.config.schema import OPDConfig
from sim.lengths import LengthModel


@dataclass(frozen=True)
class Workload:
    student: ModelDesc
    teacher: ModelDesc
    dtype_bytes: float
    batch_size: int
    micro_batch_size: int
    max_num_seqs: int
    teacher_batch: int
    top_k: int
    prompt_tokens: float
    response_mean: float
    response_batch_max: float
    response_limit: int
    max_new_tokens: int
    teacher_payload_per_token: float
    rollout_capture_per_token: float
    rollout_backend: str
    teacher_backend: str
    batching: str  # wave | continuous
    learner_strategy: str = "ddp"  # learner.strategy: ddp (full replicas) | fsdp (sharded)

    @property
    def seq_max(self) -> float:
        """Tokens of the longest possible sequence (prompt + response)."""
        return self.prompt_tokens + self.response_limit

    @property
    def seq_mean(self) -> float:
        return self.prompt_tokens + self.response_mean

    @classmethod
    def from_config(cls, cfg: OPDConfig, seed: int | None = None, n: int | None = None) -> "Workload":
        seed = cfg.run.seed if seed is None else seed
        B = cfg.learner.batch_size
        lm = LengthModel(cfg, seed)
        n = n or max(2048, 8 * B)
        lengths = [lm.response_tokens(i) for i in range(n)]
        batches = [lengths[i:i + B] for i in range(0, n - B + 1, B)] or [lengths]
        dist = cfg.sim.response_length
        limit = cfg.rollout.max_new_tokens
        if dist.kind in ("fixed", "lognormal"):
            limit = min(limit, dist.max)
        algo = cfg.algorithm
        spec = algo.spec
        queried = algo.student_top_k if spec.teacher_query == "rollout_topk" else (
            algo.num_samples if spec.teacher_query == "mc" else 0)
        teacher = model_desc_for(cfg.models.teacher)
        payload = (8 * cfg.teacher.top_k + 4 + 8 * queried + 8 * algo.teacher_samples()
                   + (4 * teacher.vocab_size if spec.teacher_full else 0))
        capture = 4 + 8 * algo.rollout_top_k() + 8 * algo.rollout_mc_samples()
        batching, _ = cfg.simulated_batching()
        return cls(
            student=model_desc_for(cfg.models.student), teacher=teacher,
            dtype_bytes=4.0 if cfg.models.dtype == "float32" else 2.0,
            batch_size=B, micro_batch_size=cfg.learner.micro_batch_size, max_num_seqs=cfg.rollout.max_num_seqs,
            teacher_batch=cfg.teacher.max_batch_samples, top_k=cfg.teacher.top_k,
            prompt_tokens=lm.mean_prompt_tokens(), response_mean=sum(lengths) / len(lengths),
            response_batch_max=sum(max(b) for b in batches) / len(batches), response_limit=limit,
            max_new_tokens=cfg.rollout.max_new_tokens,
            teacher_payload_per_token=float(payload), rollout_capture_per_token=float(capture),
            rollout_backend=cfg.rollout.backend, teacher_backend=cfg.teacher.backend, batching=batching,
            learner_strategy=cfg.learner.strategy,
        )
