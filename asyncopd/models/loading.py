"""Load a resolved checkpoint directory: the causal LM and its codec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from asyncopd.models.builtin import _quiet_transformers, validate_checkpoint_dir
from asyncopd.task.codec import CODEC_FILENAME, CharCodec, TextCodec

_DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")
    return getattr(torch, name)


def load_causal_lm(path: Union[str, os.PathLike[str]], *, dtype: str = "float32", device: str = "cpu"):
    """``AutoModelForCausalLM`` from a local directory (no hub access), in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    p = validate_checkpoint_dir(path)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(p), dtype=torch_dtype(dtype), local_files_only=True)
    return model.to(device).eval()


def load_codec(path: Union[str, os.PathLike[str]]) -> TextCodec:
    """The built-in character codec when the directory has one, else its Hugging Face tokenizer."""
    p = Path(path).expanduser()
    if (p / CODEC_FILENAME).is_file():
        return CharCodec.load(p)
    from asyncopd.models.hf_codec import HFTokenizerCodec  # (lazy: transformers, only for a tokenizer)

    return HFTokenizerCodec.from_pretrained(p)
