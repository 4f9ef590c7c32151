"""How the command line reports failure: one line on stderr and an exit status.

- bad input (a config field, a file, a run directory, a checkpoint): ``error: ...`` naming the
  field or file, exit status 2;
- a run that ended not ok (``summary.json`` ``ok: false``): ``failed: ...`` with its reason,
  exit status 1.

No traceback either way; ``ASYNCOPD_DEBUG=1`` lets the exception through to show one.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])

# What bad input raises: ConfigError, RunFormatError, pydantic's ValidationError and JSON/YAML
# decoding errors are ValueErrors; missing, unreadable or misplaced files are OSErrors.
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, OSError)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; a pydantic error names its field."""
    if isinstance(e, ValidationError) and e.errors():
        first = e.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or e.title}: {first['msg']}"
    return first_line(str(e)) or type(e).__name__


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" if none)."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def guarded(err: Console) -> Callable[[F], F]:
    """Wrap a command so that bad input ends it with one line and exit status 2."""
    def wrap(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except BAD_INPUT as e:
                if os.environ.get("ASYNCOPD_DEBUG"):
                    raise
                err.print(f"[red]error:[/red] {escape(one_line(e))}")
                raise typer.Exit(2) from None
        return run  # type: ignore[return-value]
    return wrap


def exit_unless_ok(err: Console, summary: dict[str, Any], what: str) -> None:
    """A run that did not end ok: its reason on one line, exit status 1."""
    if not summary.get("ok", False):
        err.print(f"[red]failed:[/red] {what}: {escape(first_line(str(summary.get('reason') or '')) or 'no reason')}")
        raise typer.Exit(1)
