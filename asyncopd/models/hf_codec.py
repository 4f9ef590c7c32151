"""Hugging Face tokenizers behind the ``TextCodec`` protocol, and an HF export of ``CharCodec``.

``transformers`` / ``tokenizers`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from asyncopd.task.codec import CharCodec


class HFTokenizerCodec:
    """A ``TextCodec`` over a Hugging Face tokenizer loaded from a local directory."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no EOS token")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> "HFTokenizerCodec":
        from transformers import AutoTokenizer

        p = Path(path)
        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the path named
            raise ValueError(f"cannot load a tokenizer from {p}: {type(e).__name__}: {e}") from e
        return cls(tok)

    load = from_pretrained

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid) if pid is not None else self.eos_id

    @property
    def bos_id(self) -> Optional[int]:
        bid = self.tokenizer.bos_token_id
        return int(bid) if bid is not None else None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_prompt(self, text: str) -> list[int]:
        bos = self.bos_id
        return ([bos] if bos is not None else []) + self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def save(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))

    def __repr__(self) -> str:
        return f"HFTokenizerCodec({getattr(self.tokenizer, 'name_or_path', '')!r}, vocab_size={self.vocab_size})"


def char_codec_to_hf(codec: CharCodec) -> Any:
    """A ``PreTrainedTokenizerFast`` with exactly the ids of ``codec`` (one token per character),
    so tools that only speak Hugging Face (vLLM, ``AutoTokenizer``) can read a built-in model."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    itos = [codec.decode([i]) if i not in (codec.pad_id, codec.bos_id, codec.eos_id) else None
            for i in range(codec.vocab_size)]
    specials = {codec.pad_id: "<pad>", codec.bos_id: "<bos>", codec.eos_id: "<eos>"}
    vocab = {(specials[i] if s is None else s): i for i, s in enumerate(itos)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # no <unk> in vocab: unknown characters raise
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        clean_up_tokenization_spaces=False, model_max_length=4096,
    )
