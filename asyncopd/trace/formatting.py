"""One formatter for table cells: the CLI's tables, the plan table (``asyncopd.planner.report``)
and the report of ``asyncopd compare`` (``asyncopd.trace.compare_report``).

Imports nothing of the project (nor anything heavy), so every module that prints a table can
use it without an upward import.
"""

from __future__ import annotations

from typing import Any

MISSING = "-"  # a value that was not measured or does not apply


def cell(x: Any, fmt: str = ".2f") -> str:
    """``format(x, fmt)``, or ``MISSING`` when ``x`` is None."""
    return MISSING if x is None else format(x, fmt)
