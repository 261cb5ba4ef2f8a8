"""What every contract record shares: immutability, strictness, a schema version.

Records are msgspec Structs: frozen, keyword-only, and closed to unknown fields. The
``schema_version`` is msgspec's struct tag, so it is written on every record and a
reader can tell versions apart; see ``codec`` for how versions are checked.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, NoReturn

import msgspec

from tollgate.errors import ContractError

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
"""A timezone-aware instant; naive datetimes are refused because they are ambiguous."""
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Tags = Annotated[
    dict[Name, Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=64)
]


class Record(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema_version",
):
    """Base of every record on a Tollgate topic."""

    @classmethod
    def schema_version(cls) -> int:
        """The version this class writes and reads."""
        return cls.__struct_config__.tag


def invalid(record: Record, field: str, message: str) -> NoReturn:
    """Refuse a record from ``__post_init__``, naming the field at fault."""
    raise ContractError(message, record_type=type(record).__name__, field=field)


def require_non_negative_usd(record: Record, field: str, value: Decimal | None) -> None:
    """Money is never negative and never NaN or infinite."""
    if value is not None and (not value.is_finite() or value < 0):
        invalid(record, field, f"must be a finite, non-negative amount, got {value}")
