"""Text codecs: the character-level codec of the built-in task and the ``TextCodec`` protocol.

Everything that turns text into token ids (the trainer, the evaluation helpers, the
simulator's length model) talks to a ``TextCodec``. The built-in tiny models use
:class:`CharCodec` (one token per character, plus PAD/BOS/EOS); a Hugging Face checkpoint
uses ``asyncopd.models.hf_codec.HFTokenizerCodec``, which satisfies the same protocol.

This module is pure Python: the simulator imports it and must stay torch-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence, runtime_checkable

CODEC_FILENAME = "asyncopd_codec.json"

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_SPECIALS = (PAD, BOS, EOS)
# Every character the built-in task writes: digits, step labels (a-z then A-Z), and a few
# separators. The vocabulary is fixed (it does not depend on the task config), so a model
# directory's codec file always describes the same table.
_CHARS = "0123456789" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "=>:,+ "


@runtime_checkable
class TextCodec(Protocol):
    """What the trainer needs from a tokenizer.

    ``bos_id`` may be ``None`` for tokenizers without a BOS token; use :meth:`encode_prompt`
    to get prompt ids with the BOS prepended when there is one.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> Optional[int]: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens (PAD/BOS/EOS) are dropped."""
        ...

    def encode_prompt(self, text: str) -> list[int]:
        """``[bos] + encode(text)`` (no BOS when the codec has none)."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the codec's files into ``directory`` (created if missing)."""
        ...


class CharCodec:
    """Character-level codec: ids 0..2 are PAD, BOS, EOS; then one id per character."""

    def __init__(self, chars: str = _CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("CharCodec: duplicate characters in the alphabet")
        self._itos: list[str] = list(_SPECIALS) + list(chars)
        self._stoi: dict[str, int] = {c: i for i, c in enumerate(self._itos) if i >= len(_SPECIALS)}
        self._chars = chars

    # ------------------------------------------------------------------ ids
    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset((0, 1, 2))

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharCodec: character {e.args[0]!r} is not in the vocabulary") from None

    def encode_prompt(self, text: str) -> list[int]:
        return [self.bos_id] + self.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        n = len(self._itos)
        for i in ids:
            i = int(i)
            if i < len(_SPECIALS):
                continue
            if i >= n:
                raise ValueError(f"CharCodec: id {i} is outside the vocabulary (size {n})")
            out.append(self._itos[i])
        return "".join(out)

    def strip_response(self, ids: Sequence[int]) -> list[int]:
        """Response ids up to (excluding) the first EOS."""
        ids = list(ids)
        return ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {"type": "char", "version": 1, "specials": list(_SPECIALS), "chars": self._chars}

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CODEC_FILENAME).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "CharCodec":
        p = Path(directory) / CODEC_FILENAME
        if not p.is_file():
            raise FileNotFoundError(f"no {CODEC_FILENAME} in {Path(directory)}")
        data = json.loads(p.read_text())
        if data.get("type") != "char" or list(data.get("specials", [])) != list(_SPECIALS):
            raise ValueError(f"{p}: not a CharCodec file (type={data.get('type')!r})")
        return cls(data["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharCodec) and other._itos == self._itos

    def __hash__(self) -> int:
        return hash(tuple(self._itos))

    def __repr__(self) -> str:
        return f"CharCodec(vocab_size={self.vocab_size})"
