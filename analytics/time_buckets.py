"""Time buckets in a time zone, computed without converting every row.

Converting each row's ``end_time`` to local time (DuckDB's ICU ``timezone()``) is most
of the cost of a bucketed query over millions of rows. So rows are first summed per UTC
*slot* (a whole day, hour, quarter hour or minute since the epoch), and only the slots are
converted and truncated to the local bucket. That is exact when every local bucket
boundary in the range falls on a slot boundary: when the zone's UTC offsets, and the
instants they change at, are multiples of the slot. The slot is chosen per zone and range
from the zone's own rules (tzdata, via ``zoneinfo``), coarsest first; a zone with an odd
offset in the range falls back to converting each row. With no offset at all (UTC), a
whole-day slot is the lake's ``date`` partition itself: nothing is computed per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb

from analytics.query_terms import Granularity, QueryError

_DAY_S = 86_400
_SLOTS_S = (_DAY_S, 3_600, 900, 60)
_LARGEST_SLOT_S = {
    Granularity.HOUR: 3_600,
    Granularity.DAY: _DAY_S,
    Granularity.WEEK: _DAY_S,
    Granularity.MONTH: _DAY_S,
}


@dataclass(frozen=True, slots=True)
class BucketPlan:
    """How a bucketed query computes its ``bucket``: a per-row ``slot`` expression to group
    by first, then an expression of the column ``_slot`` giving the bucket (naive local
    start). Each comes with the parameters its ``?`` take."""

    slot_sql: str
    slot_params: tuple[str, ...]
    bucket_sql: str
    bucket_params: tuple[str, ...]


def time_zone(name: object) -> str:
    """``name`` if both tzdata (``zoneinfo``, which plans the buckets) and DuckDB (which
    converts the instants) know it as a time zone; a ``QueryError`` otherwise.

    Each has names the other lacks: tzdata's ``posixrules`` and ``localtime`` are files,
    not zones DuckDB's ICU can convert with.
    """
    if not isinstance(name, str) or not name:
        raise QueryError(f"tz must be an IANA time zone name such as 'Europe/Paris', got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(f"unknown time zone {name!r}") from None
    if name not in duckdb_time_zones():
        raise QueryError(f"unknown time zone {name!r}") from None
    return name


@cache
def duckdb_time_zones() -> frozenset[str]:
    """The zone names DuckDB converts with (``pg_timezone_names()``), read once: a list
    compiled into DuckDB, not anything of the lake's."""
    with duckdb.connect(":memory:") as connection:
        rows = connection.sql("SELECT name FROM pg_timezone_names()").fetchall()
    return frozenset(row[0] for row in rows)


def bucket_plan(zone: str, start: datetime, end: datetime, granularity: Granularity) -> BucketPlan:
    """The cheapest exact way to bucket rows ending in ``[start, end)`` by ``granularity``
    in ``zone`` (validated with ``time_zone``)."""
    unit = granularity.value
    offsets, changes = _offsets(zone, start.astimezone(UTC).date(), end.astimezone(UTC).date())
    slot_s = next(
        (
            size
            for size in _SLOTS_S
            if size <= _LARGEST_SLOT_S[granularity]
            and all(offset % size == 0 for offset in offsets)
            and all(change % size == 0 for change in changes)
        ),
        None,
    )
    if slot_s is None:
        return BucketPlan(f"date_trunc('{unit}', timezone(?, end_time))", (zone,), "_slot", ())
    if slot_s == _DAY_S:  # offsets are all 0: the UTC date partition is the local day
        return BucketPlan("date", (), f"date_trunc('{unit}', CAST(_slot AS TIMESTAMP))", ())
    slot_us = slot_s * 1_000_000
    slot_start = f"make_timestamp(_slot * {slot_us})"
    if offsets == {0}:
        return BucketPlan(
            f"epoch_us(end_time) // {slot_us}", (), f"date_trunc('{unit}', {slot_start})", ()
        )
    return BucketPlan(
        f"epoch_us(end_time) // {slot_us}",
        (),
        f"date_trunc('{unit}', timezone(?, timezone('UTC', {slot_start})))",
        (zone,),
    )


@lru_cache(maxsize=512)
def _offsets(zone: str, first: date, last: date) -> tuple[frozenset[int], frozenset[int]]:
    """The UTC offsets ``zone`` uses from ``first`` to ``last`` (UTC dates, a day of margin
    on both sides), and the instants they change at, both in seconds.

    Offsets are sampled daily and each change is found to the second by bisection; a
    zone that changed twice within one day would be seen once, which tzdata has not
    recorded since the epoch.
    """
    info = ZoneInfo(zone)

    def offset_at(seconds: int) -> int:
        moment = datetime.fromtimestamp(seconds, UTC).astimezone(info)
        return int(moment.utcoffset().total_seconds())  # type: ignore[union-attr]

    begin = _epoch_seconds(first - timedelta(days=1))
    stop = _epoch_seconds(last + timedelta(days=2))
    offsets = {offset_at(begin)}
    changes: set[int] = set()
    previous_s, previous = begin, offset_at(begin)
    for seconds in range(begin + _DAY_S, stop + 1, _DAY_S):
        current = offset_at(seconds)
        if current != previous:
            low, high = previous_s, seconds  # offset_at(low) == previous != offset_at(high)
            while high - low > 1:
                middle = (low + high) // 2
                if offset_at(middle) == previous:
                    low = middle
                else:
                    high = middle
            changes.add(high)
            offsets.add(current)
        previous_s, previous = seconds, current
    return frozenset(offsets), frozenset(changes)


def _epoch_seconds(day: date) -> int:
    return (day - date(1970, 1, 1)).days * _DAY_S
