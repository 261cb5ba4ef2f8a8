"""The lake's Parquet schema and layout: exact round trips, pruning, evolution."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.factories import T0, make_priced
from tollgate.contract import PricedEvent, Status, UsageSource, encode
from tollgate.lake import (
    LINEAGE_COLUMNS,
    PRICED_SCHEMA,
    TMP_SUFFIX,
    partition_date,
    partition_dir,
    priced_dates,
    priced_files,
    priced_to_table,
    read_priced,
    table_to_priced,
    write_parquet,
)
from tollgate.lake_names import PARQUET_SUFFIX

DAY = T0.date()


def varied_events() -> list[PricedEvent]:
    """Every token kind, costs to the 12th decimal, tags, and each optional field absent."""
    return [
        make_priced(
            time=T0 + timedelta(microseconds=123_457),
            input_tokens=90_000,
            cache_read_input_tokens=60_000,
            cache_creation_input_tokens=20_000,
            output_tokens=5_000,
            reasoning_tokens=4_321,
            input_cost_usd=Decimal("0.001234567891"),
            cache_read_cost_usd=Decimal("0.000000000001"),
            cache_creation_cost_usd=Decimal("0.75"),
            output_cost_usd=Decimal("12345678901234.123456789012"),
            request_cost_usd=Decimal("0.01"),
            tags={"env": "prod", "feature": "résumé, search=1"},
            ttft_ms=123.25,
            streamed=True,
            usage_source=UsageSource.ESTIMATED,
        ),
        msgspec.structs.replace(
            make_priced(
                time=T0 + timedelta(hours=3),
                team=None,
                api_key_id=None,
                user=None,
                response_model=None,
                backend=None,
                cache_read_input_tokens=0,
                price_version="fallback@1",
            ),
            price_fallback=True,
        ),
        make_priced(
            time=T0 + timedelta(hours=5),
            tenant=None,
            team=None,
            api_key_id=None,
            user=None,
            request_model=None,
            response_model=None,
            backend=None,
            input_tokens=0,
            output_tokens=0,
            cache_read_input_tokens=0,
            input_cost_usd=Decimal(0),
            cache_read_cost_usd=Decimal(0),
            output_cost_usd=Decimal(0),
            usage_source=UsageSource.NONE,
            status=Status.REJECTED_AUTH,
            http_status=401,
            duration_ms=0.0,
        ),
    ]


def write(lake: Path, table: pa.Table, day: date = DAY, name: str = "part-0") -> Path:
    path = partition_dir(lake, day) / f"{name}{PARQUET_SUFFIX}"
    write_parquet(table, path)
    return path


def read_all(lake: Path, **window: datetime) -> list[PricedEvent]:
    batches = list(read_priced(lake, **window))
    return table_to_priced(pa.Table.from_batches(batches, schema=PRICED_SCHEMA))


def test_priced_events_round_trip_exactly_through_a_parquet_file(tmp_path: Path) -> None:
    events = varied_events()
    write(tmp_path, priced_to_table(events))

    back = read_all(tmp_path)

    assert back == events
    assert [encode(event) for event in back] == [encode(event) for event in events]
    assert back[0].end_time.tzinfo is not None
    assert back[0].output_cost_usd == Decimal("12345678901234.123456789012")


def test_the_table_has_the_canonical_schema_and_lineage_columns() -> None:
    events = varied_events()
    lineage = [("tollgate.priced.v1", 3, 1_000_000_000_000 + i) for i in range(len(events))]

    table = priced_to_table(events, lineage)

    assert table.schema == PRICED_SCHEMA
    assert table.column("_topic").to_pylist() == ["tollgate.priced.v1"] * 3
    assert table.column("_partition").to_pylist() == [3, 3, 3]
    assert table.column("_offset").to_pylist()[0] == 1_000_000_000_000
    assert table.column("event_id").to_pylist()[0] == str(events[0].event_id)
    assert table.column("tags").to_pylist()[0] == [
        ("env", "prod"),
        ("feature", "résumé, search=1"),
    ]


def test_the_schema_has_one_column_per_event_field_then_lineage() -> None:
    assert PRICED_SCHEMA.names == [*PricedEvent.__struct_fields__, *LINEAGE_COLUMNS]


def test_an_instant_in_another_zone_is_stored_as_the_same_utc_instant() -> None:
    kolkata = timezone(timedelta(hours=5, minutes=30))
    event = make_priced(time=datetime(2026, 11, 2, 23, 59, 59, 999_999, tzinfo=kolkata))

    (back,) = table_to_priced(priced_to_table([event]))

    assert back.time == event.time
    assert back.time.utcoffset() == timedelta(0)


def test_lineage_columns_are_null_when_unknown() -> None:
    table = priced_to_table(varied_events())

    assert table.column("_offset").null_count == 3
    assert table.column("_topic").null_count == 3


def test_a_cost_with_more_than_twelve_decimals_is_refused_not_rounded() -> None:
    event = make_priced(input_cost_usd=Decimal("0.0000000000001"))

    with pytest.raises(ValueError, match="input_cost_usd"):
        priced_to_table([event])


def test_the_partition_is_the_utc_date_of_the_end_time() -> None:
    evening_in_new_york = datetime(2026, 11, 2, 21, 0, tzinfo=timezone(timedelta(hours=-5)))

    assert partition_date(evening_in_new_york) == date(2026, 11, 3)


def test_reading_opens_only_the_partitions_in_range(tmp_path: Path) -> None:
    inside = make_priced(time=T0)
    write(tmp_path, priced_to_table([inside]))
    for day in (DAY - timedelta(days=1), DAY + timedelta(days=1)):
        corrupt = partition_dir(tmp_path, day) / f"part-0{PARQUET_SUFFIX}"
        corrupt.parent.mkdir(parents=True)
        corrupt.write_bytes(b"not parquet at all")

    window = {"since": T0 - timedelta(hours=1), "until": T0 + timedelta(hours=1)}

    assert priced_dates(tmp_path, **window) == [DAY]
    assert read_all(tmp_path, **window) == [inside]
    with pytest.raises(pa.ArrowInvalid):  # the corrupt files would have been noticed
        read_all(tmp_path)


def test_an_until_at_midnight_does_not_open_the_following_day(tmp_path: Path) -> None:
    midnight = datetime.combine(DAY + timedelta(days=1), datetime.min.time(), tzinfo=UTC)

    for day in (DAY, DAY + timedelta(days=1)):
        partition_dir(tmp_path, day).mkdir(parents=True)

    assert priced_dates(tmp_path, since=T0, until=midnight) == [DAY]


def test_rows_outside_the_range_are_filtered_by_end_time(tmp_path: Path) -> None:
    early, middle, late = (make_priced(time=T0 + timedelta(hours=h)) for h in (0, 1, 2))
    write(tmp_path, priced_to_table([early, middle, late]))

    got = read_all(tmp_path, since=middle.end_time, until=late.end_time)

    assert got == [middle]


def test_files_being_written_and_stray_files_are_ignored(tmp_path: Path) -> None:
    done = make_priced()
    write(tmp_path, priced_to_table([done]))
    directory = partition_dir(tmp_path, DAY)
    (directory / f"part-1{PARQUET_SUFFIX}{TMP_SUFFIX}").write_bytes(b"half a file")
    (directory / "_SUCCESS").write_bytes(b"")
    (tmp_path / "priced" / "not-a-partition").mkdir()

    assert [path.name for path in priced_files(tmp_path)] == ["part-0.parquet"]
    assert read_all(tmp_path) == [done]


def test_writing_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = write(tmp_path, priced_to_table([make_priced()]))

    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_an_old_file_missing_newer_columns_reads_with_defaults(tmp_path: Path) -> None:
    event = make_priced(output_tokens=300, reasoning_tokens=0)
    old = priced_to_table([event]).drop_columns(["reasoning_tokens", "tags", "_topic"])
    directory = partition_dir(tmp_path, DAY)
    directory.mkdir(parents=True)
    pq.write_table(old, directory / f"old{PARQUET_SUFFIX}")

    batches = list(read_priced(tmp_path))

    assert batches[0].schema == PRICED_SCHEMA
    assert batches[0].column("reasoning_tokens").null_count == 1
    assert table_to_priced(pa.Table.from_batches(batches)) == [event]


def test_an_unknown_column_is_ignored(tmp_path: Path) -> None:
    event = make_priced()
    newer = priced_to_table([event]).append_column("carbon_g", pa.array([1.5]))
    write(tmp_path, newer)

    batches = list(read_priced(tmp_path))

    assert "carbon_g" not in batches[0].schema.names
    assert table_to_priced(pa.Table.from_batches(batches)) == [event]


def test_files_of_both_schemas_read_together(tmp_path: Path) -> None:
    first, second = make_priced(), make_priced()
    write(tmp_path, priced_to_table([first]).drop_columns(["ttft_ms"]), name="a")
    write(tmp_path, priced_to_table([second]), name="b")

    assert read_all(tmp_path) == [first, second]


def test_only_the_columns_asked_for_are_read(tmp_path: Path) -> None:
    write(tmp_path, priced_to_table(varied_events()))

    batches = list(read_priced(tmp_path, since=T0, columns=["event_id", "cost_usd"]))

    assert batches[0].schema.names == ["event_id", "cost_usd"]


def test_a_naive_datetime_is_refused(tmp_path: Path) -> None:
    write(tmp_path, priced_to_table([make_priced()]))

    with pytest.raises(ValueError, match="timezone-aware"):
        list(read_priced(tmp_path, since=datetime(2026, 11, 2)))


def test_an_empty_lake_reads_nothing(tmp_path: Path) -> None:
    assert list(read_priced(tmp_path / "nowhere", since=T0)) == []
