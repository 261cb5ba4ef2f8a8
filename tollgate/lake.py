"""The Parquet lake: where priced events are kept for good, and how it is laid out.

The lake is the durable history. The embedded broker keeps nothing on disk, so whatever
must survive a restart (budget state, above all) is rebuilt from here. The sink writes
it; the stream's rebuild and the analytics (DuckDB, pandas) read it. Layout::

    <lake>/priced/date=YYYY-MM-DD/<name>.parquet     one row per priced event
    <lake>/alerts/date=YYYY-MM-DD/<name>.parquet     one row per alert (``ALERTS_SCHEMA``)
    <lake>/budget_state/date=YYYY-MM-DD/<name>.parquet   every budget state published
    <lake>/evaluations/date=YYYY-MM-DD/<name>.parquet    one row per evaluation of a call

``date`` is the UTC date of the event's ``end_time`` (the instant budgets count it at; for an
alert or an evaluation its ``time``, for a budget state its ``as_of_time``), so
a reader asking for a time range opens only the partitions that can hold it, and every
copy of an event lands in the same partition. A file is written under ``<name>.tmp`` and
renamed when complete: readers take only names ending in ``.parquet``.

Records and events: the sink writes each record of its topics once (file names carry
offset ranges; ``stream.sink_files`` states the invariant). An *event* can still have two
rows: the meter may publish one twice after a crash, and the sink drops a second copy
only within a window of offsets (compaction drops the rest, day by day). Readers that
add things up dedupe by ``event_id``.

File names: the sink names each file after the records it holds (``RangeName``), so the
lake itself says how far each topic partition has been written; compaction merges a
day's files into one per partition whose name covers theirs. A file covered by such a
compacted file is *superseded*: ``live_files`` leaves it out, so a reader that lists
files with it sees every row once even while a compaction is half done. Files are
zstd-compressed, in row groups of ``ROW_GROUP_ROWS``.

Schema decisions (``PRICED_SCHEMA``):

- ``event_id`` is the canonical UUID text (``8-4-4-4-12``, lower case): what DuckDB,
  pandas and a human read without a conversion.
- Instants are ``timestamp[us, tz=UTC]``, Python's own precision, so they round-trip.
- Money is ``decimal128(38, 12)``: exact, never a float. Twelve decimals hold any price
  catalog rate down to $0.000001 per million tokens; a cost with more decimals is refused
  when the table is built, never rounded. 26 integer digits leave room for any sum.
- Enums (``operation``, ``usage_source``, ``status``) are their string values. Parquet
  dictionary-encodes such low-cardinality columns on disk by itself, so they cost about
  what an integer code would, and readers see plain, stable strings.
- ``tags`` is a ``map<string, string>``: typed, and DuckDB reads it as ``tags['env']``
  without parsing JSON. An event without tags has an empty map.
- Added later, so null in older files (and read as the contract's defaults):
  ``cache_creation_1h_input_tokens`` (0), ``list_cost_usd`` and ``contract_version``
  (null: the list price billed the call, so its list cost is ``cost_usd``).
- Lineage columns ``_topic``, ``_partition``, ``_offset`` say where in the priced topic the
  row came from (null when unknown): what makes exactly-once writes by offset range
  checkable.

Schema evolution: columns are only ever added, with a default. ``read_priced`` reads every
file against ``PRICED_SCHEMA``: a column an older file lacks reads as null (and
``table_to_priced`` gives the field its default), a column this code does not know is
ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tollgate.contract import Alert, BudgetState, Dimension, EvaluationEvent, PricedEvent
from tollgate.lake_names import PARQUET_SUFFIX, live_files
from tollgate.private_files import make_private_dirs, open_private

PRICED = "priced"
"""Sub-lake of priced events."""
ALERTS = "alerts"
"""Sub-lake of alerts."""
BUDGET_STATE = "budget_state"
"""Sub-lake of published budget states: the history of every budget subject."""
EVALUATIONS = "evaluations"
"""Sub-lake of evaluations: quality signals about calls, joined to ``priced`` by ``event_id``."""

TMP_SUFFIX = ".tmp"
"""A file still being written; readers never open it."""
ROW_GROUP_ROWS = 128 * 1024
"""Rows per Parquet row group: a few MB compressed, the unit readers skip and split by."""
_PARTITION = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

MONEY = pa.decimal128(38, 12)
"""USD amounts: exact to 12 decimal places (a millionth of a millionth of a dollar)."""
INSTANT = pa.timestamp("us", tz="UTC")

LINEAGE_COLUMNS = ("_topic", "_partition", "_offset")

PRICED_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("time", INSTANT, nullable=False),
        pa.field("end_time", INSTANT, nullable=False),
        pa.field("tenant", pa.string()),
        pa.field("team", pa.string()),
        pa.field("api_key_id", pa.string()),
        pa.field("user", pa.string()),
        pa.field("tags", pa.map_(pa.string(), pa.string())),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("operation", pa.string(), nullable=False),
        pa.field("request_model", pa.string()),
        pa.field("response_model", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("cache_read_input_tokens", pa.int64(), nullable=False),
        pa.field("cache_creation_input_tokens", pa.int64(), nullable=False),
        pa.field("reasoning_tokens", pa.int64(), nullable=False),
        pa.field("usage_source", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("http_status", pa.int32(), nullable=False),
        pa.field("duration_ms", pa.float64(), nullable=False),
        pa.field("ttft_ms", pa.float64()),
        pa.field("streamed", pa.bool_(), nullable=False),
        pa.field("cache_creation_1h_input_tokens", pa.int64()),
        pa.field("token_budget", pa.int64()),
        pa.field("input_cost_usd", MONEY, nullable=False),
        pa.field("cache_read_cost_usd", MONEY, nullable=False),
        pa.field("cache_creation_cost_usd", MONEY, nullable=False),
        pa.field("output_cost_usd", MONEY, nullable=False),
        pa.field("request_cost_usd", MONEY, nullable=False),
        pa.field("cost_usd", MONEY, nullable=False),
        pa.field("price_version", pa.string(), nullable=False),
        pa.field("price_fallback", pa.bool_(), nullable=False),
        pa.field("list_cost_usd", MONEY),
        pa.field("contract_version", pa.string()),
        pa.field("_topic", pa.string()),
        pa.field("_partition", pa.int32()),
        pa.field("_offset", pa.int64()),
    ],
    metadata={"tollgate.record": "PricedEvent", "tollgate.lake_schema": "1"},
)
"""One column per ``PricedEvent`` field, then the lineage columns."""

_LINEAGE_FIELDS = [
    pa.field("_topic", pa.string()),
    pa.field("_partition", pa.int32()),
    pa.field("_offset", pa.int64()),
]

ALERTS_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("time", INSTANT, nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("scope", pa.map_(pa.string(), pa.string())),
        pa.field("tenant", pa.string()),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("budget_id", pa.string()),
        pa.field("threshold_pct", pa.int32()),
        pa.field("spent_usd", MONEY),
        pa.field("limit_usd", MONEY),
        pa.field("expected_usd", MONEY),
        pa.field("actual_usd", MONEY),
        pa.field("impact_usd", MONEY),
        pa.field("score", pa.float64()),
        pa.field("since", INSTANT),
        *_LINEAGE_FIELDS,
    ],
    metadata={"tollgate.record": "Alert", "tollgate.lake_schema": "1"},
)
"""One column per ``Alert`` field; ``tenant`` repeats ``scope['tenant']`` so that a
tenant's rows are found (and isolated) with a plain column filter."""

BUDGET_STATE_SCHEMA = pa.schema(
    [
        pa.field("budget_id", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("scope", pa.map_(pa.string(), pa.string())),
        pa.field("tenant", pa.string()),
        pa.field("action", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("spent_tokens", pa.int64(), nullable=False),
        pa.field("spent_usd", MONEY, nullable=False),
        pa.field("limit_tokens", pa.int64()),
        pa.field("limit_usd", MONEY),
        pa.field("window_start", INSTANT, nullable=False),
        pa.field("window_end", INSTANT, nullable=False),
        pa.field("reset_at", INSTANT),
        pa.field("threshold_pct", pa.int32()),
        pa.field("as_of_time", INSTANT, nullable=False),
        *_LINEAGE_FIELDS,
    ],
    metadata={"tollgate.record": "BudgetState", "tollgate.lake_schema": "1"},
)
"""One column per ``BudgetState`` field but the internal ``as_of_offsets``; ``tenant`` as in
``ALERTS_SCHEMA``."""

EVALUATIONS_SCHEMA = pa.schema(
    [
        pa.field("evaluation_id", pa.string(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("time", INSTANT, nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("api_key_id", pa.string()),
        pa.field("name", pa.string(), nullable=False),
        pa.field("score_value", pa.float64()),
        pa.field("score_label", pa.string()),
        pa.field("explanation", pa.string()),
        pa.field("evaluator", pa.string()),
        *_LINEAGE_FIELDS,
    ],
    metadata={"tollgate.record": "EvaluationEvent", "tollgate.lake_schema": "1"},
)
"""One column per ``EvaluationEvent`` field; ids as canonical UUID text, as in ``priced``."""

SCHEMAS: dict[str, pa.Schema] = {
    PRICED: PRICED_SCHEMA,
    ALERTS: ALERTS_SCHEMA,
    BUDGET_STATE: BUDGET_STATE_SCHEMA,
    EVALUATIONS: EVALUATIONS_SCHEMA,
}
"""The schema of each sub-lake."""

_EVENT_FIELDS: tuple[str, ...] = PricedEvent.__struct_fields__
_EVENT_DEFAULTS = frozenset(
    field.name for field in msgspec.structs.fields(PricedEvent) if not field.required
)
"""Fields with a default: a null read from the lake (a column an old file lacks) takes it."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def partition_date(instant: datetime) -> date:
    """The date partition of an event ending at ``instant``: its UTC date."""
    return _aware(instant, "instant").astimezone(UTC).date()


def partition_dir(lake: Path, day: date, sub_lake: str = PRICED) -> Path:
    """``<lake>/<sub_lake>/date=YYYY-MM-DD``."""
    return lake / sub_lake / f"date={day.isoformat()}"


def write_parquet(table: pa.Table, path: Path, *, row_group_rows: int = ROW_GROUP_ROWS) -> None:
    """Write ``table`` to ``path`` (a ``.parquet`` name) so no reader sees half a file.

    The file is written as ``<path>.tmp``, flushed to disk, then renamed into place (and
    the rename flushed too, so a file once seen survives a power cut). zstd, in row
    groups of ``row_group_rows``. Files and directories are private to the owner
    (``tollgate.private_files``).
    """
    if path.suffix != PARQUET_SUFFIX:
        raise ValueError(f"lake files end in {PARQUET_SUFFIX}: {path}")
    make_private_dirs(path.parent)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with os.fdopen(open_private(tmp), "wb") as sink:
        pq.write_table(table, sink, compression="zstd", row_group_size=row_group_rows)
        sink.flush()
        os.fsync(sink.fileno())
    tmp.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def priced_to_table(
    events: Sequence[PricedEvent], lineage: Sequence[tuple[str, int, int]] | None = None
) -> pa.Table:
    """The lake rows of ``events``; ``lineage`` is (topic, partition, offset) per event.

    Raises ``ValueError`` for a cost with more than 12 decimals: the lake never rounds.
    """
    if lineage is not None and len(lineage) != len(events):
        raise ValueError(f"{len(lineage)} lineage entries for {len(events)} events")
    columns: dict[str, list[Any]] = {name: [] for name in PRICED_SCHEMA.names}
    for event in events:
        for name in _EVENT_FIELDS:
            columns[name].append(getattr(event, name))
    columns["event_id"] = [str(value) for value in columns["event_id"]]
    columns["tags"] = [list(tags.items()) for tags in columns["tags"]]
    if lineage is None:
        for name in LINEAGE_COLUMNS:
            columns[name] = [None] * len(events)
    else:
        for name, values in zip(LINEAGE_COLUMNS, zip(*lineage, strict=True), strict=True):
            columns[name] = list(values)
    arrays = []
    for field in PRICED_SCHEMA:
        try:
            arrays.append(pa.array(columns[field.name], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(f"column {field.name!r} does not fit the lake: {error}") from None
    return pa.Table.from_arrays(arrays, schema=PRICED_SCHEMA)


def alerts_to_table(
    alerts: Sequence[Alert], lineage: Sequence[tuple[str, int, int]] | None = None
) -> pa.Table:
    """The lake rows of ``alerts``; ``lineage`` as in ``priced_to_table``."""
    rows = [
        {
            "alert_id": str(alert.alert_id),
            "kind": alert.kind.value,
            "severity": alert.severity.value,
            "time": alert.time,
            "subject": alert.subject,
            "scope": _scope(alert.scope),
            "tenant": alert.scope.get(Dimension.TENANT),
            "summary": alert.summary,
            "budget_id": alert.budget_id,
            "threshold_pct": alert.threshold_pct,
            "spent_usd": alert.spent_usd,
            "limit_usd": alert.limit_usd,
            "expected_usd": alert.expected_usd,
            "actual_usd": alert.actual_usd,
            "impact_usd": alert.impact_usd,
            "score": alert.score,
            "since": alert.since,
        }
        for alert in alerts
    ]
    return _rows_to_table(rows, ALERTS_SCHEMA, lineage)


def states_to_table(
    states: Sequence[BudgetState], lineage: Sequence[tuple[str, int, int]] | None = None
) -> pa.Table:
    """The lake rows of ``states``; ``lineage`` as in ``priced_to_table``."""
    rows = [
        {
            "budget_id": state.budget_id,
            "subject": state.subject,
            "scope": _scope(state.scope),
            "tenant": state.scope.get(Dimension.TENANT),
            "action": state.action.value,
            "status": state.status.value,
            "spent_tokens": state.spent_tokens,
            "spent_usd": state.spent_usd,
            "limit_tokens": state.limit_tokens,
            "limit_usd": state.limit_usd,
            "window_start": state.window_start,
            "window_end": state.window_end,
            "reset_at": state.reset_at,
            "threshold_pct": state.threshold_pct,
            "as_of_time": state.as_of_time,
        }
        for state in states
    ]
    return _rows_to_table(rows, BUDGET_STATE_SCHEMA, lineage)


def evaluations_to_table(
    evaluations: Sequence[EvaluationEvent], lineage: Sequence[tuple[str, int, int]] | None = None
) -> pa.Table:
    """The lake rows of ``evaluations``; ``lineage`` as in ``priced_to_table``."""
    rows = [
        {
            "evaluation_id": str(evaluation.evaluation_id),
            "event_id": str(evaluation.event_id),
            "time": evaluation.time,
            "tenant": evaluation.tenant,
            "api_key_id": evaluation.api_key_id,
            "name": evaluation.name,
            "score_value": evaluation.score_value,
            "score_label": evaluation.score_label,
            "explanation": evaluation.explanation,
            "evaluator": evaluation.evaluator,
        }
        for evaluation in evaluations
    ]
    return _rows_to_table(rows, EVALUATIONS_SCHEMA, lineage)


def _scope(scope: Mapping[Dimension, str]) -> list[tuple[str, str]]:
    return [(Dimension(dimension).value, value) for dimension, value in scope.items()]


def _rows_to_table(
    rows: list[dict[str, Any]],
    schema: pa.Schema,
    lineage: Sequence[tuple[str, int, int]] | None,
) -> pa.Table:
    if lineage is not None and len(lineage) != len(rows):
        raise ValueError(f"{len(lineage)} lineage entries for {len(rows)} rows")
    for i, row in enumerate(rows):
        row.update(zip(LINEAGE_COLUMNS, lineage[i] if lineage else (None, None, None), strict=True))
    arrays = []
    for field in schema:
        try:
            arrays.append(pa.array([row[field.name] for row in rows], type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(f"column {field.name!r} does not fit the lake: {error}") from None
    return pa.Table.from_arrays(arrays, schema=schema)


def table_to_priced(table: pa.Table | pa.RecordBatch) -> list[PricedEvent]:
    """The priced events in ``table`` (lake rows), validated as the contract says.

    A column the table lacks, or a null where the event has a default, gives the
    field its default; lineage and unknown columns are left out.
    """
    names = [name for name in _EVENT_FIELDS if name in table.schema.names]
    columns: dict[str, list[Any]] = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            micros = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            columns[name] = [None if us is None else _instant(us) for us in micros.to_pylist()]
        elif pa.types.is_decimal(column.type):
            columns[name] = [None if v is None else _plain(v) for v in column.to_pylist()]
        elif pa.types.is_map(column.type):
            columns[name] = [None if v is None else dict(v) for v in column.to_pylist()]
        else:
            columns[name] = column.to_pylist()
    events = []
    for row in range(table.num_rows):
        fields = {}
        for name in names:
            value = columns[name][row]
            if value is None and name in _EVENT_DEFAULTS:
                continue
            fields[name] = value
        events.append(msgspec.convert(fields, PricedEvent))
    return events


def priced_dates(
    lake: Path, since: datetime | None = None, until: datetime | None = None
) -> list[date]:
    """The date partitions that can hold events ending in ``[since, until)``, oldest first.

    Found by directory name alone: no file is opened.
    """
    first = partition_date(since) if since is not None else date.min
    last = partition_date(until - timedelta(microseconds=1)) if until is not None else date.max
    return [day for day in lake_dates(lake, PRICED) if first <= day <= last]


def lake_dates(lake: Path, sub_lake: str) -> list[date]:
    """Every date partition of ``sub_lake``, oldest first, by directory name alone."""
    root = lake / sub_lake
    if not root.is_dir():
        return []
    days = []
    for directory in root.iterdir():
        match = _PARTITION.match(directory.name)
        if match is None or not directory.is_dir():
            continue
        try:
            days.append(date.fromisoformat(match.group(1)))
        except ValueError:  # date=2026-13-40: not a partition this code wrote
            continue
    return sorted(days)


def priced_files(
    lake: Path, since: datetime | None = None, until: datetime | None = None
) -> list[Path]:
    """The finished Parquet files of the partitions that can hold events ending in
    ``[since, until)``, oldest partition first; superseded files are left out (see
    ``live_files``). Files elsewhere are never opened."""
    files: list[Path] = []
    for day in priced_dates(lake, since, until):
        files.extend(live_files(partition_dir(lake, day)))
    return files


def read_priced(
    lake: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Lake rows of events whose ``end_time`` is in ``[since, until)``, in batches.

    Every batch has ``PRICED_SCHEMA``'s types (only ``columns``, if given): older files
    read with nulls in the columns they lack, unknown columns are dropped. Rows are not
    deduplicated; see the module docstring.
    """
    files = priced_files(lake, since, until)
    if not files:
        return
    condition = None
    if since is not None:
        condition = ds.field("end_time") >= pa.scalar(_aware(since, "since"), type=INSTANT)
    if until is not None:
        before = ds.field("end_time") < pa.scalar(_aware(until, "until"), type=INSTANT)
        condition = before if condition is None else condition & before
    dataset = ds.dataset([str(path) for path in files], schema=PRICED_SCHEMA, format="parquet")
    selected = list(columns) if columns is not None else None
    yield from dataset.to_batches(columns=selected, filter=condition)


def _aware(instant: datetime, name: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"`{name}` must be timezone-aware, got {instant!r}")
    return instant


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _plain(amount: Decimal) -> Decimal:
    """``0.000150000000`` → ``0.00015``, ``100.000000000000`` → ``100``: the same amount,
    written as the contract writes it (no exponent, no padding)."""
    normal = amount.normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal
