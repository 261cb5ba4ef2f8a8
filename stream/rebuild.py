"""Rebuild budget states from the lake, for when the broker's history is gone.

The embedded broker keeps nothing on disk: after it restarts, the budget stage's table
and its changelog are empty. Every window still open at ``now`` is replayed from the
Parquet lake instead: one pass over the date partitions that can hold live spend, the
priced events deduplicated by ``event_id`` (the lake is at-least-once), their spend
summed per subject and bucket, and the sums folded in with ``budget_engine.apply``, so
the windows, thresholds and published fields are exactly what the stage would have
computed from the same events.

What differs from the stage's own states, on purpose:

- **No watermarks.** A watermark is an offset in the old broker's usage partitions.
  A new broker numbers offsets from 0 again, so a kept watermark would make the stage
  skip every new contribution below it as already counted: silent undercounting.
  Spend is counted here under a synthetic partition and offset, and ``watermarks`` is
  then emptied; the published ``as_of_offsets`` are empty too.
- **Thresholds already crossed are marked alerted, and no alert is sent.** Their alerts
  went out before the restart; the next one fires only for a threshold not yet crossed.
- Only subjects with spend still in their window get a state; ``dropped_late`` counts
  from the rebuild on. A subject with nothing in its window has no state, as after the
  stage deleted it for being idle.

Rebuilding is vectorised with pyarrow: per date partition, only the needed columns are
read, duplicates dropped, and rows grouped by subject dimensions and bucket; Python sees
one row per group, not per event. Memory holds one day of those columns at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.budget_definitions import BudgetIndex, SubjectMatch
from stream.budget_engine import Contribution, SubjectState, apply, to_budget_state
from stream.budget_windows import CalendarView, SlidingView, WindowView, utc, window_view
from tollgate.contract import BudgetDefinition, BudgetState, BudgetWindow, Dimension
from tollgate.lake import PRICED_SCHEMA, priced_dates, read_priced

DIMENSIONS = tuple(Dimension)
"""Subject dimensions; each is also the name of its lake column."""
REBUILD_COLUMNS = (
    "event_id",
    "end_time",
    *(dimension.value for dimension in DIMENSIONS),
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
"""All a rebuild reads from the lake."""
REBUILD_PARTITION = -1
"""The synthetic source partition rebuilt spend is counted under (no real one is < 0)."""

_READ_SCHEMA = pa.schema([PRICED_SCHEMA.field(name) for name in REBUILD_COLUMNS])
_ZERO_USD = pa.scalar(Decimal(0), PRICED_SCHEMA.field("cost_usd").type)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROW = "__row"
_BUCKET = "__bucket"


def oldest_live_instant(definition: BudgetDefinition, now: datetime) -> datetime:
    """The oldest event time that still counts toward ``definition`` at ``now``.

    Sliding: the start of the oldest bucket still in the window (at most ``size_s`` plus
    one bucket width before ``now``). Calendar: the start of the previous period while it
    is still within its grace, else of the current one.
    """
    view = window_view(definition.window, now)
    if isinstance(view, SlidingView):
        return utc(view.first_live * view.width_s)
    assert isinstance(view, CalendarView)
    return utc(view.previous_key if view.previous_open else view.current_key)


def rebuild_states(lake: Path, budgets: BudgetIndex, now: datetime) -> dict[str, SubjectState]:
    """The state of every budget subject with spend in its window at ``now``, by state
    key, from the priced events in ``lake``; see the module docstring for how it differs
    from a state the stage built itself."""
    definitions = list(budgets)
    if not definitions:
        return {}
    since = min(oldest_live_instant(definition, now) for definition in definitions)
    tally = _Tally(budgets, now)
    for day in priced_dates(lake, since=since):
        table = _read_day(lake, day, since)
        if table.num_rows:
            tally.add(table)
    return tally.states()


def rebuilt_budget_states(
    states: Mapping[str, SubjectState], budgets: BudgetIndex, now: datetime
) -> list[BudgetState]:
    """The ``BudgetState`` records to publish for rebuilt ``states``, by state key.

    States of budgets no longer defined are left out.
    """
    published = []
    for key in sorted(states):
        state = states[key]
        definition = budgets.get(state.budget_id)
        if definition is not None:
            published.append(to_budget_state(state, definition, now))
    return published


def _read_day(lake: Path, day: date, since: datetime) -> pa.Table:
    """One date partition's events since ``since`` that spent something, each once.

    Copies of an event share its ``end_time`` and so its partition: deduplicating per
    partition is deduplicating the lake. The first copy read is kept.
    """
    start = datetime.combine(day, time(), tzinfo=UTC)
    batches = read_priced(
        lake, since=max(since, start), until=start + timedelta(days=1), columns=REBUILD_COLUMNS
    )
    table = pa.Table.from_batches(list(batches), schema=_READ_SCHEMA)
    if not table.num_rows:
        return table
    first = (
        table.select(["event_id"])
        .append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
        .group_by("event_id", use_threads=False)
        .aggregate([(_ROW, "min")])
        .column(f"{_ROW}_min")
    )
    if len(first) < table.num_rows:
        table = table.take(first)
    tokens = pc.add(
        pc.fill_null(table.column("input_tokens"), 0),
        pc.fill_null(table.column("output_tokens"), 0),
    )
    usd = pc.fill_null(table.column("cost_usd"), _ZERO_USD)
    spent = pc.or_(pc.greater(tokens, 0), pc.greater(usd, _ZERO_USD))
    table = pa.table(
        {
            "event_id": table.column("event_id"),
            "end_us": table.column("end_time").cast(pa.int64()),
            **{dimension.value: table.column(dimension.value) for dimension in DIMENSIONS},
            "tokens": tokens,
            "usd": usd,
        }
    )
    return table.filter(spent)


@dataclass(slots=True)
class _BucketSpend:
    """Spend of one subject in one bucket: what one aggregated contribution carries."""

    tokens: int
    usd: Decimal
    latest_us: int
    """The latest event time in it (Unix microseconds): the contribution's event time."""
    event_id: str
    """The greatest (UUIDv7: about the newest) event id in it, for the record."""


class _Tally:
    """Spend per state key and bucket, summed over the days read."""

    def __init__(self, budgets: BudgetIndex, now: datetime) -> None:
        self.budgets = budgets
        self.now = now
        by_window: dict[BudgetWindow, list[BudgetDefinition]] = {}
        for definition in budgets:
            by_window.setdefault(definition.window, []).append(definition)
        self.windows = {window: window_view(window, now) for window in by_window}
        self.dimensions = {
            window: tuple(d for d in DIMENSIONS if any(d in x.scope for x in defined))
            for window, defined in by_window.items()
        }
        """Per window, the dimensions its budgets are scoped by: all a group needs."""
        self.matches: dict[tuple[BudgetWindow, tuple[str | None, ...]], list[SubjectMatch]] = {}
        self.spend: dict[str, dict[int, _BucketSpend]] = {}
        self.subjects: dict[str, SubjectMatch] = {}

    def add(self, table: pa.Table) -> None:
        """Fold one day's deduplicated rows in."""
        end_s = table.column("end_us").to_numpy() / 1e6
        for window, view in self.windows.items():
            buckets = _buckets(view, end_s)
            live = ~np.isnan(buckets)
            if not live.any():
                continue
            dimensions = [d.value for d in self.dimensions[window]]
            grouped = (
                table.select(["event_id", "end_us", *dimensions, "tokens", "usd"])
                .append_column(_BUCKET, pa.array(np.where(live, buckets, 0).astype(np.int64)))
                .filter(pa.array(live))
                .group_by([*dimensions, _BUCKET], use_threads=True)
                .aggregate(
                    [
                        ("tokens", "sum"),
                        ("usd", "sum"),
                        ("end_us", "max"),
                        ("event_id", "max"),
                    ]
                )
            )
            keys = zip(*(grouped.column(name).to_pylist() for name in dimensions), strict=True)
            rows = zip(
                keys,
                grouped.column(_BUCKET).to_pylist(),
                grouped.column("tokens_sum").to_pylist(),
                grouped.column("usd_sum").to_pylist(),
                grouped.column("end_us_max").to_pylist(),
                grouped.column("event_id_max").to_pylist(),
                strict=True,
            )
            for values, bucket, tokens, usd, latest_us, event_id in rows:
                for match in self._matches(window, dimensions, values):
                    self._count(match, bucket, tokens, usd, latest_us, event_id)

    def _matches(
        self, window: BudgetWindow, dimensions: list[str], values: tuple[str | None, ...]
    ) -> list[SubjectMatch]:
        """The subjects of ``window``'s budgets that a group with ``values`` counts for."""
        key = (window, values)
        found = self.matches.get(key)
        if found is None:
            event = dict(zip((Dimension(d) for d in dimensions), values, strict=True))
            found = [m for m in self.budgets.subjects(event) if m.definition.window == window]
            self.matches[key] = found
        return found

    def _count(
        self,
        match: SubjectMatch,
        bucket: int,
        tokens: int,
        usd: Decimal,
        latest_us: int,
        event_id: str,
    ) -> None:
        self.subjects.setdefault(match.state_key, match)
        buckets = self.spend.setdefault(match.state_key, {})
        spend = buckets.get(bucket)
        if spend is None:
            buckets[bucket] = _BucketSpend(tokens, usd, latest_us, event_id)
            return
        spend.tokens += tokens
        spend.usd += usd
        spend.latest_us = max(spend.latest_us, latest_us)
        spend.event_id = max(spend.event_id, event_id)

    def states(self) -> dict[str, SubjectState]:
        """Each state key's spend applied in event-time order, one batch per key."""
        states: dict[str, SubjectState] = {}
        for key, buckets in self.spend.items():
            match = self.subjects[key]
            ordered = sorted(buckets.values(), key=lambda spend: spend.latest_us)
            contributions = _contributions(match, ordered)
            # The crossings apply reports are thresholds crossed before the restart:
            # they are marked alerted in the state, and not alerted again.
            state, _ = apply(None, match.definition, contributions, self.now)
            states[key] = msgspec.structs.replace(state, watermarks={})
        return states


def _contributions(match: SubjectMatch, spends: Iterable[_BucketSpend]) -> list[Contribution]:
    return [
        Contribution(
            state_key=match.state_key,
            budget_id=match.definition.budget_id,
            subject=match.subject,
            scope=match.scope,
            event_id=uuid.UUID(spend.event_id),
            event_time=_EPOCH + timedelta(microseconds=spend.latest_us),
            tokens=spend.tokens,
            usd=spend.usd,
            source_partition=REBUILD_PARTITION,
            source_offset=offset,
        )
        for offset, spend in enumerate(spends)
    ]


def _buckets(view: WindowView, end_s: np.ndarray) -> np.ndarray:
    """``view.bucket_of`` for every event time (Unix seconds); NaN where it is late.

    The same float arithmetic as ``bucket_of`` on ``datetime.timestamp()``, so every
    event lands in the bucket the stage would have put it in.
    """
    if isinstance(view, SlidingView):
        buckets = np.floor_divide(np.minimum(end_s, view.now_s), view.width_s)
        return np.where(buckets >= view.first_live, buckets, np.nan)
    assert isinstance(view, CalendarView)
    previous = view.previous_key if view.previous_open else np.nan
    return np.where(
        end_s >= view.current_key,
        float(view.current_key),
        np.where(end_s >= view.previous_key, previous, np.nan),
    )
