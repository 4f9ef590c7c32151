"""The built-in synthetic task (running sum mod 10 with a chain of thought) and its codec.

Pure Python on purpose: the simulator imports this package and must not pull in torch.
"""

from asyncopd.task.builtin import (
    ANSWER_MARK,
    LABELS,
    MAX_TERMS,
    PROMPT_END,
    BuiltinTask,
    Grade,
    Problem,
    make_problem,
    prompt_tokens_for,
    response_tokens_for,
)
from asyncopd.task.codec import CODEC_FILENAME, CharCodec, TextCodec
from asyncopd.task.config import TaskConfig

__all__ = [
    "ANSWER_MARK", "LABELS", "MAX_TERMS", "PROMPT_END", "BuiltinTask", "Grade", "Problem",
    "make_problem", "prompt_tokens_for", "response_tokens_for", "CODEC_FILENAME", "CharCodec",
    "TextCodec", "TaskConfig",
]
