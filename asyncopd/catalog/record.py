"""What the catalogue's frozen records (``Hardware``, ``ModelDesc``) share: checked copies and dicts."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

RecordT = TypeVar("RecordT", bound="CatalogRecord")


class CatalogRecord:
    """Mixin for a frozen dataclass whose constructor validates its fields."""

    def with_overrides(self: RecordT, **kw: Any) -> RecordT:
        """A copy with some fields replaced (validated like the constructor)."""
        valid = [f.name for f in fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(kw) - set(valid))
        if unknown:
            raise TypeError(f"{type(self).__name__}.with_overrides: unknown field(s) {', '.join(unknown)}; "
                            f"valid fields: {', '.join(valid)}")
        return replace(self, **kw)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
