"""The ``algorithm`` section: which OPD estimator the learner optimises, and what it needs.

The estimators are catalogued in ``asyncopd/catalog/estimators.py`` (``ESTIMATORS``: what
each reads, whether it is a policy-gradient estimator); the math of each lives in
``asyncopd/losses/<name>.py``.

Combinations are refused here, at config time, with the reason:

- a stabiliser (clip, decoupled PPO, M2PO) or ``advantage`` with a non-PG estimator: those act
  on an importance ratio ``pi_theta / mu`` of sampled ids, which the analytic estimators
  (sums over a support with known weights) do not have;
- ``reverse_kl_student_topk`` without ``student_top_k``; ``mc_*`` with ``num_samples < 1``
  (and ``mc_reverse_kl`` needs ``num_samples >= 2`` to differ from ``sampled_reverse_kl``);
- backend limits (``vllm``): see ``check_backends``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from asyncopd.catalog.estimators import ESTIMATORS, EstimatorSpec

LossName = Literal[tuple(ESTIMATORS)]  # type: ignore[valid-type]  (the names of the catalogue)


class AlgorithmConfig(BaseModel):
    """The learner's estimator and its options (see the module docstring for what is refused)."""

    model_config = ConfigDict(extra="forbid")

    loss: LossName = Field("forward_kl_topk", description="the OPD estimator: " + ", ".join(ESTIMATORS))
    advantage: Literal["online", "offline"] = Field(
        "online", description="PG estimators: reward log p_T - log pi_theta (online, recomputed at learner "
                              "time) or log p_T - log mu (offline, the behaviour log-prob)")
    topk_tail: Literal["bucket", "drop"] = Field(
        "bucket", description="reverse KL on a top-k support: 'bucket' charges the mass outside the support as one "
                              "outcome (a true KL, >= 0); 'drop' truncates it (collapses: see losses/reverse_kl_topk.py)")
    student_top_k: int = Field(0, ge=0, description="K of reverse_kl_student_topk (the rollout's top-K support)")
    num_samples: int = Field(4, ge=1, description="M draws per position for mc_reverse_kl / mc_forward_kl")
    stabiliser: Literal["none", "clip", "decoupled_ppo", "m2po"] = Field(
        "none", description="PG estimators only: PPO ratio clip, decoupled PPO (AReaL), or M2PO's dynamic mask")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="clip / decoupled_ppo: ratio clipped to [1-eps, 1+eps]")
    behaviour_weight_cap: float = Field(5.0, gt=1, description="decoupled_ppo: drop tokens with pi_prox/mu above this")
    m2po_budget: float = Field(0.01, gt=0, description="m2po: bound on the mean squared log-ratio of kept tokens")

    @property
    def spec(self) -> EstimatorSpec:
        return ESTIMATORS[self.loss]

    @model_validator(mode="after")
    def _combination(self) -> "AlgorithmConfig":
        spec = self.spec
        if not spec.policy_gradient:
            if self.stabiliser != "none":
                raise ValueError(f"stabiliser={self.stabiliser} needs a policy-gradient loss (sampled_reverse_kl or "
                                 f"mc_reverse_kl): {self.loss} has no importance ratio to stabilise")
            if self.advantage != "online":  # (the default is accepted: configs are written out in full)
                raise ValueError(f"advantage={self.advantage} applies to policy-gradient losses only; "
                                 f"{self.loss} does not use it")
        if self.topk_tail != "bucket" and self.loss not in ("reverse_kl_topk", "reverse_kl_student_topk"):
            raise ValueError(f"topk_tail={self.topk_tail} applies to the reverse-KL top-k losses only, not {self.loss}")
        if self.loss == "reverse_kl_student_topk" and self.student_top_k < 1:
            raise ValueError("loss reverse_kl_student_topk needs student_top_k >= 1 (the rollout's top-K support)")
        if self.loss == "mc_reverse_kl" and self.num_samples < 2:
            raise ValueError("loss mc_reverse_kl needs num_samples >= 2 (with 1 it is sampled_reverse_kl)")
        return self

    # ------------------------------------------------------------- what to capture
    def rollout_top_k(self) -> int:
        """K the rollout must record per position (0: none)."""
        return self.student_top_k if self.spec.rollout_topk else 0

    def rollout_mc_samples(self) -> int:
        """M draws from mu the rollout must record per position (0: none)."""
        return self.num_samples if self.spec.rollout_mc else 0

    def teacher_samples(self) -> int:
        """M draws from p_T the teacher must return per position (0: none)."""
        return self.num_samples if self.spec.teacher_samples else 0


def check_backends(algo: AlgorithmConfig, rollout_backend: str, teacher_backend: str) -> None:
    """Refuse what the vLLM backend cannot provide (raises ValueError naming the fields)."""
    spec = algo.spec
    if rollout_backend == "vllm" and spec.rollout_mc:
        raise ValueError(f"algorithm.loss={algo.loss} needs M extra draws per position from the exact sampling "
                         "distribution; vLLM samples one token per position (rollout.backend=vllm). Use "
                         "rollout.backend=torch or loss=sampled_reverse_kl")
    if teacher_backend == "vllm" and (spec.teacher_full or spec.teacher_samples or spec.teacher_query):
        what = ("the full-vocabulary distribution" if spec.teacher_full else
                "ids sampled from p_T at every position" if spec.teacher_samples else
                "log p_T at ids chosen by the student (its top-K or MC draws)")
        raise ValueError(f"algorithm.loss={algo.loss} needs {what} from the teacher, which vLLM's prompt_logprobs "
                         "do not return (teacher.backend=vllm). Use teacher.backend=torch")
