"""The OPD estimators the learner can optimise: the one list of their names and needs.

Each entry says what the estimator reads — from the teacher-score cache and from the
rollout — so the trainer asks the rollout and the teacher for exactly that, and whether it is
a policy-gradient (PG) estimator, the only kind the async-RL stabilisers and the
``advantage`` choice apply to. The config's ``algorithm.loss`` choices derive from it; the math
of each lives in ``asyncopd/losses/<name>.py``, whose ``estimate`` function the learner calls
(``implementation`` names another). Pure Python: the config is validated without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    summary: str
    policy_gradient: bool = False  # a PG surrogate on sampled ids: stabilisers and advantage apply
    rollout_topk: bool = False  # needs the student's top-K at generation time (RolloutCapture.topk_*)
    rollout_mc: bool = False  # needs M draws from mu per position (RolloutCapture.mc_*)
    teacher_query: Optional[Literal["rollout_topk", "mc"]] = None  # teacher log p_T at those ids
    teacher_samples: bool = False  # needs M ids drawn from p_T (TeacherPayload.sample_*)
    teacher_full: bool = False  # needs the full-vocabulary teacher distribution (dense reference)
    implementation: str = ""  # "module:function" under asyncopd.losses; "" means "<name>:estimate"

    def __post_init__(self) -> None:
        if not self.implementation:
            object.__setattr__(self, "implementation", f"{self.name}:estimate")


ESTIMATORS: dict[str, EstimatorSpec] = {e.name: e for e in (
    EstimatorSpec("forward_kl_topk", "forward KL on the teacher's top-k (teacher-weighted)"),
    EstimatorSpec("reverse_kl_topk", "reverse KL on the teacher's top-k, truncated"),
    EstimatorSpec("reverse_kl_student_topk", "reverse KL on the rollout student's top-K, teacher queried there",
                  rollout_topk=True, teacher_query="rollout_topk"),
    EstimatorSpec("sampled_reverse_kl", "one-sample PG reverse KL on the emitted token", policy_gradient=True),
    EstimatorSpec("mc_reverse_kl", "M-sample PG reverse KL on draws from mu", policy_gradient=True,
                  rollout_mc=True, teacher_query="mc"),
    EstimatorSpec("mc_forward_kl", "M-sample forward KL on draws from the teacher", teacher_samples=True),
    EstimatorSpec("dense_forward_kl", "full-vocabulary forward KL (the infinite-cache reference)", teacher_full=True,
                  implementation="dense:estimate_forward"),
    EstimatorSpec("dense_reverse_kl", "full-vocabulary reverse KL (the infinite-cache reference)", teacher_full=True,
                  implementation="dense:estimate_reverse"),
)}
