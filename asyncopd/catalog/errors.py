"""Errors of the model catalogue (the model descriptions, the config.json parser, the presets)."""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A model description could not be built (bad/missing config key, unknown name)."""


class UnknownModelError(ModelConfigError, KeyError):
    """An unknown model name (a ``ValueError`` and a ``KeyError``; prints its message plainly)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
