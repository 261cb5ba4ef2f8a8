"""The shared pieces of lake queries: argument checks, and the WHERE and GROUP BY parts.

Column names in SQL come only from ``Dimension`` (an allowlist) and are quoted; every
value a caller gives is a ``?`` parameter. The tenant scope is one more AND-ed condition,
so no filter can widen it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from analytics.query_terms import Dimension, Filters, Granularity, QueryError

QUERY_ERROR = "tollgate query error: "
"""Prefix of errors a query raises while it runs (via SQL ``error()``); ``Lake`` turns
them into ``QueryError``."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
"""Instants must be before this: the last year of Python's calendar is left for the days
and weeks a query adds to its bounds."""
MAX_RANGE = {
    None: timedelta(days=3660),
    Granularity.HOUR: timedelta(days=400),
    Granularity.DAY: timedelta(days=3660),
    Granularity.WEEK: timedelta(days=3660),
    Granularity.MONTH: timedelta(days=3660),
}
"""The longest range each granularity may span: an hourly series stays under ~10k buckets."""
MAX_FILTER_VALUES = 1000
MAX_VALUE_LENGTH = 256
"""As long as a contract ``Name`` can be."""

TOKEN_SUMS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
)
"""The token columns ``spend`` adds up, in output order (``total_tokens`` follows)."""
TOTAL_TOKENS = (
    "CAST(coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) AS BIGINT) "
    "AS total_tokens"
)
"""Input plus output tokens, from the two sums (cheaper than summing a third column)."""


def dimension(value: object) -> Dimension:
    """``value`` as a ``Dimension``: one of the allowlisted names."""
    if isinstance(value, Dimension):
        return value
    if isinstance(value, str):
        try:
            return Dimension(value)
        except ValueError:
            pass
    allowed = ", ".join(d.value for d in Dimension)
    raise QueryError(f"unknown dimension {value!r}; use one of: {allowed}")


def dimensions(values: Sequence[Dimension | str] | None) -> tuple[Dimension, ...]:
    if values is None:
        return ()
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise QueryError(f"group_by must be a list of dimensions, got {values!r}")
    found = tuple(dimension(value) for value in values)
    if len(set(found)) != len(found):
        raise QueryError(f"group_by names a dimension twice: {[d.value for d in found]}")
    return found


def granularity(value: object, *, optional: bool = True) -> Granularity | None:
    if value is None and optional:
        return None
    if isinstance(value, Granularity):
        return value
    if isinstance(value, str):
        try:
            return Granularity(value)
        except ValueError:
            pass
    allowed = ", ".join(g.value for g in Granularity)
    raise QueryError(f"unknown granularity {value!r}; use one of: {allowed}")


def instant(value: object, name: str) -> datetime:
    """``value`` as an aware UTC datetime from 1970 up to 9999; naive ones are refused as
    ambiguous. Messages show the value as ISO-8601 text."""
    if not isinstance(value, datetime):
        raise QueryError(f"{name} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(
            f"{name} must be timezone-aware (e.g. tzinfo=UTC), got {value.isoformat()}"
        )
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is a year before year 1 in UTC
        moment = None
    if moment is None or not EPOCH <= moment < LATEST:
        raise QueryError(
            f"{name} must be from {EPOCH.isoformat()} to before {LATEST.isoformat()}, "
            f"got {value.isoformat()}"
        )
    return moment


def time_range(
    start: object, end: object, grain: Granularity | None = None
) -> tuple[datetime, datetime]:
    """``[start, end)`` in UTC, checked: aware, ordered, and not too long for ``grain``.

    ``start == end`` is the empty range: valid, and no row falls in it."""
    first, last = instant(start, "start"), instant(end, "end")
    if last < first:
        raise QueryError(
            f"end ({last.isoformat()}) must be after start ({first.isoformat()}), or equal to "
            "it for an empty range"
        )
    longest = MAX_RANGE[grain]
    if last - first > longest:
        what = f"{grain.value}ly buckets" if grain is Granularity.HOUR else "this query"
        raise QueryError(f"the range is longer than {longest.days} days, the most {what} span")
    return first, last


def column(dim: Dimension, alias: str = "") -> str:
    """The quoted view column of ``dim`` (``user`` is an SQL keyword, so always quote)."""
    return f'{alias}"{dim.value}"'


def name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH:
        raise QueryError(
            f"{what} must be a string of 1 to {MAX_VALUE_LENGTH} characters, got {value!r}"
        )
    return value


def count(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise QueryError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return value


def filter_values(raw: Filters | None) -> dict[Dimension, tuple[str, ...]]:
    """``filters`` checked: known dimensions, each with 1 to 1000 non-empty strings.

    A bare string is taken as a list of one value.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise QueryError(f"filters must map dimensions to lists of values, got {raw!r}")
    checked: dict[Dimension, tuple[str, ...]] = {}
    for key, values in raw.items():
        dim = dimension(key)
        if dim in checked:
            raise QueryError(f"filters name {dim.value!r} twice")
        if isinstance(values, str):
            values = (values,)
        if isinstance(values, bytes) or not isinstance(values, Iterable):
            raise QueryError(f"filter on {dim.value!r} must be a list of values, got {values!r}")
        values = tuple(values)
        if not values:
            raise QueryError(f"filter on {dim.value!r} lists no values")
        if len(values) > MAX_FILTER_VALUES:
            raise QueryError(f"filter on {dim.value!r} lists more than {MAX_FILTER_VALUES} values")
        checked[dim] = tuple(name(value, f"a value of filter {dim.value!r}") for value in values)
    return checked


class Where:
    """AND-ed conditions and their parameters, in the order they appear in the SQL."""

    def __init__(self, alias: str = "") -> None:
        self.alias = alias
        self.conditions: list[str] = []
        self.params: list[Any] = []

    def add(self, condition: str, *params: Any) -> Where:
        self.conditions.append(condition)
        self.params.extend(params)
        return self

    def ended_in(self, start: datetime, end: datetime, column: str = "end_time") -> Where:
        """Rows whose ``column`` is in ``[start, end)``, and the ``date`` partitions that
        can hold them (so DuckDB opens no other directory)."""
        a = self.alias
        self.add(f"{a}{column} >= ? AND {a}{column} < ?", start, end)
        return self.add(f"{a}date >= ? AND {a}date <= ?", *partition_span(start, end))

    def matching(self, filters: Mapping[Dimension, tuple[str, ...]]) -> Where:
        for dim, values in filters.items():
            marks = ", ".join("?" * len(values))
            self.add(f"{column(dim, self.alias)} IN ({marks})", *values)
        return self

    def scoped(self, tenant_scope: str | None) -> Where:
        """Only ``tenant_scope``'s rows (a row without a tenant is nobody's)."""
        if tenant_scope is not None:
            self.add(f"{self.alias}tenant = ?", name(tenant_scope, "tenant_scope"))
        return self

    def sql(self) -> str:
        return f"WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


def partition_span(start: datetime, end: datetime) -> tuple[date, date]:
    """The first and last ``date`` partition of ``[start, end)`` (UTC dates)."""
    return start.astimezone(UTC).date(), (end.astimezone(UTC) - timedelta(microseconds=1)).date()


def order(columns: Iterable[str]) -> str:
    """ORDER BY ``columns`` ascending, nulls last: a total order over the output keys."""
    keys = [f"{c} ASC NULLS LAST" for c in columns]
    return f"ORDER BY {', '.join(keys)}" if keys else ""


def listed(columns: Iterable[str], trailing: bool = True) -> str:
    """``a, b, `` (or ``""``): a select-list prefix."""
    text = ", ".join(columns)
    return f"{text}, " if text and trailing else text


def sql_text(value: str) -> str:
    """A single-quoted SQL string literal (for paths this code builds, never user values)."""
    return "'" + value.replace("'", "''") + "'"
