"""Load a YAML config, apply ``--set a.b=c`` overrides, validate; fail with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from asyncopd.config.schema import OPDConfig


class ConfigError(ValueError):
    """A config problem, phrased as one line that names the file and the field."""


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """``pipeline.policy.eta=4`` → tree["pipeline"]["policy"]["eta"] = 4 (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. learner.lr=3e-4")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e.__class__.__name__})") from None
    node = tree
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        elif not isinstance(nxt, dict):
            # e.g. pipeline.policy is a string and the user sets pipeline.policy.eta
            raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[: i + 1])} is {nxt!r}, not a mapping")
        node = nxt
    node[parts[-1]] = value


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic inserts union-branch names ("str", "dict[str,any]") into loc; keep real field names
    # (a key with control characters, e.g. a line separator, is shown as its repr: the error stays one line)
    return ".".join(str(p) if str(p).isprintable() else repr(p) for p in loc
                    if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float"))))


def format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = _field_path(tuple(first["loc"]))
    msg = " ".join(first["msg"].removeprefix("Value error, ").split())
    more = len(err.errors()) - 1
    tail = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"config error in {source}: {where + ': ' if where else ''}{msg}{tail}"


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> OPDConfig:
    source = str(path) if path else "<defaults>"
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config error in {p}: not valid YAML{at}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config error in {p}: top level must be a mapping of sections")
        tree = loaded or {}
    for o in overrides:
        apply_override(tree, o)
    try:
        return OPDConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def dump_config(cfg: OPDConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
