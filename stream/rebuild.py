"""Rebuild budget states from the lake, for when the broker's history is gone.

The embedded broker keeps nothing on disk: after it restarts, the budget stage's table
and its changelog are empty. Every window still open at ``now`` is replayed from the
Parquet lake instead, in one pass over the date partitions that can hold live spend;
the priced events are deduplicated by ``event_id`` (the lake is at-least-once), their
spend is summed per subject and bucket, and the sums are folded in with
``budget_engine.apply``, in event-time order and one batch per state key. Windows,
threshold marks and the published fields are therefore exactly what the stage would
have computed from the same events.

What differs from a state the stage built itself, on purpose:

- **No watermarks.** A watermark is an offset in the old broker's usage partitions. A
  new broker numbers offsets from 0 again, so a kept watermark would make the stage skip
  every new contribution below it as already counted: silent undercounting. Spend is
  counted here under a synthetic partition and offsets, then ``watermarks`` is emptied;
  the published ``as_of_offsets`` are empty too.
- **Thresholds already crossed are marked alerted, and no alert is sent.** Their alerts
  went out before the restart; the next alert is for a threshold not yet crossed.
- **One contribution per subject and bucket**, not per event: a bucket only ever holds a
  sum. Its ``event_time`` is the latest event time in the bucket (so ``as_of_time`` is
  the latest counted), and its ``event_id`` is ``REBUILT_EVENT_ID``.
- Only subjects with spend still in their window get a state, and ``dropped_late`` counts
  from the rebuild on. A subject with nothing left in its window has no state, as if the
  stage had deleted it for being idle.

The same pass also collects the ids of the events that ended from ``ids_since`` on
(``LakeRebuild.event_ids``): the meter drops those when they come again on the new broker
(a gateway resends what the dead broker had acknowledged), because the rebuilt states
counted them already. States and ids come from one read of the lake, so an event the sink
writes meanwhile is in both or in neither.

The work is vectorised with pyarrow: per date partition only the needed columns are
read, duplicates dropped and, per budget, rows grouped by subject and bucket; Python
sees one row per (subject, bucket), never one per event. Memory holds one day of those
columns at a time: copies of an event share its ``end_time``, hence its partition, so
deduplicating day by day deduplicates the lake.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from itertools import groupby
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream.budget_definitions import BudgetIndex
from stream.budget_engine import Contribution, SubjectState, apply, to_budget_state
from stream.budget_windows import CalendarView, SlidingView, WindowView, utc, window_view
from tollgate.contract import (
    EACH,
    BudgetDefinition,
    BudgetState,
    BudgetWindow,
    Dimension,
    state_key,
    subject_key,
)
from tollgate.lake import PRICED_SCHEMA, priced_dates, read_priced

REBUILD_COLUMNS = (
    "event_id",
    "end_time",
    *(dimension.value for dimension in Dimension),
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
"""All a rebuild reads from the lake; each ``Dimension`` is also its column's name."""
REBUILD_PARTITION = -1
"""The synthetic source partition rebuilt spend is counted under (no real one is < 0)."""
REBUILT_EVENT_ID = uuid.UUID(int=0)
"""The ``event_id`` of a rebuilt contribution: it sums a bucket, not one event."""

_READ_SCHEMA = pa.schema([PRICED_SCHEMA.field(name) for name in REBUILD_COLUMNS])
_ZERO_USD = pa.scalar(Decimal(0), PRICED_SCHEMA.field("cost_usd").type)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROW = "__row"
_BUCKET = "__bucket"
_HEX_VALUE = np.zeros(256, np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SUMS = [("tokens", "sum"), ("usd", "sum"), ("end_us", "max")]
"""Spend per group: its tokens, its dollars, its latest event time (Unix microseconds)."""


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


@dataclass
class LakeRebuild:
    """What the lake says a worker that lost its broker's history has counted."""

    states: dict[str, SubjectState] = field(default_factory=dict)
    """Every budget subject with spend in its window, by state key."""
    event_ids: set[bytes] = field(default_factory=set)
    """The 16-byte ids of the events read that ended from ``ids_since`` on."""


def rebuild_states(
    lake: Path, budgets: BudgetIndex, now: datetime, until: datetime | None = None
) -> dict[str, SubjectState]:
    """The state of every budget subject with spend in its window at ``now``, by state
    key, from the priced events in ``lake`` that ended before ``until`` (all if None).

    See the module docstring for how these states differ from ones the stage built.
    """
    return rebuild_from_lake(lake, budgets, now, until).states


def rebuild_from_lake(
    lake: Path,
    budgets: BudgetIndex,
    now: datetime,
    until: datetime | None = None,
    ids_since: datetime | None = None,
) -> LakeRebuild:
    """``rebuild_states``, and the ids of the events that ended in ``[ids_since, until)``
    (none if ``ids_since`` is None), from one read of the lake."""
    definitions = list(budgets)
    starts = [oldest_live_instant(definition, now) for definition in definitions]
    if ids_since is not None:
        starts.append(ids_since)
    if not starts:
        return LakeRebuild()
    since = min(starts)
    views = {definition.window: window_view(definition.window, now) for definition in definitions}
    partial: dict[str, list[pa.Table]] = {definition.budget_id: [] for definition in definitions}
    rebuilt = LakeRebuild()
    for day in priced_dates(lake, since=since, until=until):
        table = _read_day(lake, day, since, until, ids_since, rebuilt.event_ids)
        if not table.num_rows:
            continue
        end_s = table.column("end_us").to_numpy() / 1e6
        buckets: dict[BudgetWindow, np.ndarray] = {}
        for definition in definitions:
            window = definition.window
            if window not in buckets:
                buckets[window] = _buckets(views[window], end_s)
            spend = _spend_by_bucket(table, buckets[window], definition)
            if spend.num_rows:
                partial[definition.budget_id].append(spend)
    for definition in definitions:
        tables = partial[definition.budget_id]
        if tables:
            rebuilt.states.update(_apply_spend(_merge(tables, definition), definition, now))
    return rebuilt


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


def _read_day(
    lake: Path,
    day: date,
    since: datetime,
    until: datetime | None,
    ids_since: datetime | None,
    event_ids: set[bytes],
) -> pa.Table:
    """One date partition's events since ``since`` that spent something, each once.

    The first copy read of an event is kept. Columns: ``end_us`` (Unix microseconds),
    the dimensions, ``tokens`` (input plus output) and ``usd``. The ids of the events
    that ended from ``ids_since`` on, spent or not, are added to ``event_ids``.
    """
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1) if until is None else min(until, start + timedelta(days=1))
    batches = read_priced(lake, since=max(since, start), until=end, columns=REBUILD_COLUMNS)
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
    if ids_since is not None:
        recent = pc.greater_equal(
            table.column("end_time"), pa.scalar(ids_since, table.column("end_time").type)
        )
        event_ids.update(_uuid_bytes(table.column("event_id").filter(recent)))
    # Columns an older file lacked read as null: they count as nothing.
    tokens = pc.add(
        pc.fill_null(table.column("input_tokens"), 0),
        pc.fill_null(table.column("output_tokens"), 0),
    )
    usd = pc.fill_null(table.column("cost_usd"), _ZERO_USD)
    spent = pc.or_(pc.greater(tokens, 0), pc.greater(usd, _ZERO_USD))
    table = pa.table(
        {
            "end_us": table.column("end_time").cast(pa.int64()),
            **{dimension.value: table.column(dimension.value) for dimension in Dimension},
            "tokens": tokens,
            "usd": usd,
        }
    )
    return table.filter(spent)


def _uuid_bytes(ids: pa.ChunkedArray) -> list[bytes]:
    """The 16 bytes of each UUID in ``ids`` (canonical strings), decoded with numpy: a
    million a second faster than ``uuid.UUID`` one by one."""
    hex_digits = pc.replace_substring(ids, "-", "").combine_chunks().cast(pa.binary())
    if not len(hex_digits):
        return []
    offsets = np.frombuffer(hex_digits.buffers()[1], np.int32)[
        hex_digits.offset : hex_digits.offset + len(hex_digits) + 1
    ]
    if hex_digits.null_count or not (np.diff(offsets) == 32).all():
        return [uuid.UUID(event_id).bytes for event_id in ids.to_pylist()]
    digits = np.frombuffer(hex_digits.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _HEX_VALUE[digits].reshape(-1, 2)
    raw = ((nibbles[:, 0] << 4) | nibbles[:, 1]).astype(np.uint8).tobytes()
    return [raw[i : i + 16] for i in range(0, len(raw), 16)]


def _buckets(view: WindowView, end_s: np.ndarray) -> np.ndarray:
    """``view.bucket_of`` for every event time (Unix seconds); NaN where it is late.

    The same float arithmetic as ``bucket_of`` on ``datetime.timestamp()`` (microseconds
    over 1e6, correctly rounded), so every event lands in the stage's bucket.
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


def _shape(definition: BudgetDefinition) -> list[str]:
    """The dimensions ``definition`` is scoped by, in subject order."""
    return [dimension.value for dimension in Dimension if dimension in definition.scope]


def _spend_by_bucket(
    table: pa.Table, buckets: np.ndarray, definition: BudgetDefinition
) -> pa.Table:
    """Spend of ``definition``'s subjects per bucket: rows of its shape, ``_BUCKET`` and
    the ``_SUMS`` columns.

    A row counts when its bucket is live and it ``covers`` the scope: a value for every
    scoped dimension, equal to the pinned one where the scope pins it.
    """
    live = ~np.isnan(buckets)
    if not live.any():
        return table.schema.empty_table()
    mask = pa.array(live)
    shape = _shape(definition)
    for name in shape:
        wanted = definition.scope[Dimension(name)]
        column = table.column(name)
        matches = pc.is_valid(column) if wanted == EACH else pc.equal(column, wanted)
        mask = pc.and_(mask, pc.fill_null(matches, False))
    return (
        table.select([*shape, "tokens", "usd", "end_us"])
        .append_column(_BUCKET, pa.array(np.where(live, buckets, 0).astype(np.int64)))
        .filter(mask)
        .group_by([*shape, _BUCKET])
        .aggregate(_SUMS)
        .rename_columns({"tokens_sum": "tokens", "usd_sum": "usd", "end_us_max": "end_us"})
    )


def _merge(tables: list[pa.Table], definition: BudgetDefinition) -> pa.Table:
    """Sum per-day spend of the same subject and bucket (a bucket can span midnight)."""
    if len(tables) == 1:
        return tables[0]
    return (
        pa.concat_tables(tables)
        .group_by([*_shape(definition), _BUCKET])
        .aggregate(_SUMS)
        .rename_columns({"tokens_sum": "tokens", "usd_sum": "usd", "end_us_max": "end_us"})
    )


def _apply_spend(
    spend: pa.Table, definition: BudgetDefinition, now: datetime
) -> dict[str, SubjectState]:
    """Each subject's bucket sums through ``apply``, in event-time order, in one batch."""
    shape = _shape(definition)
    spend = spend.sort_by([(name, "ascending") for name in [*shape, "end_us"]])
    subjects = zip(*(spend.column(name).to_pylist() for name in shape), strict=True)
    rows = zip(
        subjects,
        spend.column("tokens").to_pylist(),
        spend.column("usd").to_pylist(),
        spend.column("end_us").to_pylist(),
        strict=True,
    )
    dimensions = [Dimension(name) for name in shape]
    states: dict[str, SubjectState] = {}
    for values, sums in groupby(rows, key=lambda row: row[0]):
        scope = definition.covers(dict(zip(dimensions, values, strict=True)))
        assert scope is not None  # _spend_by_bucket kept only rows that it covers
        subject = subject_key(scope)
        key = state_key(definition.budget_id, subject)
        contributions = [
            Contribution(
                state_key=key,
                budget_id=definition.budget_id,
                subject=subject,
                scope=scope,
                event_id=REBUILT_EVENT_ID,
                event_time=_EPOCH + timedelta(microseconds=end_us),
                tokens=tokens,
                usd=usd,
                source_partition=REBUILD_PARTITION,
                source_offset=offset,
            )
            for offset, (_, tokens, usd, end_us) in enumerate(sums)
        ]
        # The crossings apply reports are thresholds crossed before the restart: they
        # are now marked alerted in the state, and are not alerted again.
        state, _ = apply(None, definition, contributions, now)
        states[key] = msgspec.structs.replace(state, watermarks={})
    return states
