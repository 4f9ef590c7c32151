"""The torch/transformers backend: rollout (KV-cached sampling), teacher scoring (one prefill
per batch, top-k payload) and the learner (forward KL on the teacher's top-k), for CPU or one GPU.

Importing this package imports torch and transformers; ``asyncopd`` itself does not.
"""

from asyncopd.backends.torch_backend.learner import TorchLearner
from asyncopd.backends.torch_backend.rollout import TorchRolloutEngine
from asyncopd.backends.torch_backend.sampling import sample_from_logprobs, sampling_logprobs
from asyncopd.backends.torch_backend.teacher import TorchTeacherScorer

__all__ = [
    "TorchLearner",
    "TorchRolloutEngine",
    "TorchTeacherScorer",
    "sample_from_logprobs",
    "sampling_logprobs",
]
