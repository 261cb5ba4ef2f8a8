"""The lake sink on the real broker: rows equal to the events, exactly once through
crashes, restarts and a broker that lost its log; and its fast decoder against the contract.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.sink import LakeSink
from stream.sink_rows import decode_priced
from tests.factories import T0, make_alert, make_priced, make_state
from tests.own_broker import kill, own_settings, start_own_broker, wait_until
from tests.stream_world import REPO, StreamWorker, worker_env
from tests.test_lake_schema import varied_events
from tollgate.broker import free_port
from tollgate.contract import PricedEvent, decode, encode
from tollgate.kafka import consumer_options, producer_options
from tollgate.lake import (
    ALERTS,
    BUDGET_STATE,
    PRICED,
    SCHEMAS,
    TMP_SUFFIX,
    alerts_to_table,
    lake_dates,
    partition_date,
    partition_dir,
    priced_to_table,
    states_to_table,
    table_to_priced,
)
from tollgate.lake_names import RangeName, live_files
from tollgate.settings import KafkaSettings, LakeSettings, Settings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(90)

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
Placed = tuple[int, int]
"""(partition, offset) of a record on its topic."""


# -- the world: a sink in this process, records with their places, the lake's rows ----------


def sink_settings(kafka: KafkaSettings, lake: Path, **lake_fields: Any) -> Settings:
    """Sink settings for a test: small rolls, and a 1 s session so that joins take ~1 s."""
    fields = {"sink_roll_rows": 50, "sink_roll_s": 0.2, **lake_fields}
    return Settings(
        kafka=kafka.model_copy(update={"session_timeout_s": 1.0}),
        lake=LakeSettings(path=lake, **fields),
    )


@asynccontextmanager
async def running_sink(settings: Settings, broker: str) -> AsyncIterator[LakeSink]:
    """A sink in this process; stopped cleanly (buffers written) on the way out."""
    sink = LakeSink(settings, broker)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield sink
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def produce(
    kafka: KafkaSettings,
    broker: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> list[Placed]:
    """Send ``records`` (key, value) in order; where each one landed."""
    producer = AIOKafkaProducer(**producer_options(kafka, broker))
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, partition=partition)
            for key, value in records
        ]
        await producer.flush()
        placed = [await future for future in futures]
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in placed]


def priced_records(events: list[PricedEvent]) -> list[tuple[bytes | None, bytes | None]]:
    return [((e.tenant or "").encode(), encode(e)) for e in events]


def spread_events(count: int, days: int = 2) -> list[PricedEvent]:
    """Events of several tenants over ``days`` UTC dates, interleaved, so a range of a
    partition holds rows of every date."""
    return [
        make_priced(
            tenant=TENANTS[i % len(TENANTS)],
            time=T0 - timedelta(days=i % days, seconds=i),
            tags={"env": "prod"} if i % 3 else {},
            ttft_ms=None if i % 2 else 40.5,
        )
        for i in range(count)
    ]


def lake_table(lake: Path, sub_lake: str) -> pa.Table:
    """Every row of ``sub_lake`` a reader listing live files sees."""
    files = [path for day in lake_dates(lake, sub_lake) for path in live_files(
        partition_dir(lake, day, sub_lake))]  # fmt: skip
    schema = SCHEMAS[sub_lake]
    if not files:
        return schema.empty_table()
    return pa.concat_tables([pq.read_table(path, schema=schema) for path in files])


def lake_rows(lake: Path, sub_lake: str = PRICED) -> int:
    return lake_table(lake, sub_lake).num_rows


def lineage(table: pa.Table) -> list[Placed]:
    return list(zip(table["_partition"].to_pylist(), table["_offset"].to_pylist(), strict=True))


def by_id(events: list[PricedEvent]) -> list[PricedEvent]:
    return sorted(events, key=lambda event: str(event.event_id))


def range_files(lake: Path, sub_lake: str = PRICED) -> dict[Path, RangeName]:
    names = {}
    for path in (lake / sub_lake).glob("date=*/*.parquet"):
        name = RangeName.parse(path.name)
        assert name is not None, path
        names[path] = name
    return names


async def until_rows(lake: Path, count: int, sub_lake: str = PRICED, timeout_s: float = 30) -> None:
    await wait_until(lambda: lake_rows(lake, sub_lake) >= count, timeout_s)


# -- the fast decoder ---------------------------------------------------------------------------


class _Record(msgspec.Struct):
    offset: int
    timestamp: int
    value: bytes | None


def _records(values: list[bytes | None]) -> list[_Record]:
    return [_Record(offset, 1_000 + offset, value) for offset, value in enumerate(values)]


def _edited(event: PricedEvent, **fields: Any) -> bytes:
    wire = msgspec.json.decode(encode(event))
    for name, value in fields.items():
        if value is None:
            del wire[name]
        else:
            wire[name] = value
    return msgspec.json.encode(wire)


def test_the_fast_decoder_gives_the_rows_the_contract_gives() -> None:
    events = varied_events()
    values: list[bytes | None] = [encode(event) for event in events]
    one = events[0]
    # The same instants and id, written otherwise: the contract reads them alike.
    values.append(_edited(one, time="2026-11-02T11:30:00.123457+02:00"))
    values.append(_edited(one, event_id=str(one.event_id).upper()))
    values.append(None)  # a tombstone gives no row
    records = _records(values)

    rows = decode_priced("t.priced", 2, records)

    decoded = [(r, decode(r.value, PricedEvent)) for r in records if r.value is not None]
    expected = priced_to_table(
        [event for _, event in decoded], [("t.priced", 2, r.offset) for r, _ in decoded]
    )
    assert rows.rejected == []
    assert rows.table.equals(expected)


def test_records_the_contract_refuses_are_rejected_and_the_rest_kept() -> None:
    good = make_priced()
    bad = [
        _edited(good, cost_usd="1"),  # its parts add up to less
        _edited(good, input_cost_usd="-0.00015", cost_usd="0.000045"),
        _edited(good, event_id="0b5e1b2c-6bd5-4d3f-9c61-2b1f1d0f8a11"),  # a UUIDv4
        _edited(good, end_time="2026-11-02T09:29:00Z"),  # before `time`
        _edited(good, time="2026-11-02T09:30:00"),  # naive
        _edited(good, input_cost_usd="0.0001500000001", cost_usd="0.0003450000001"),
        _edited(good, prompt="hello"),  # unknown field
        _edited(good, schema_version=None),
        _edited(good, schema_version=3),  # a version this build does not read
        _edited(good, tenant=None),  # null tenant on a call that was authenticated
        _edited(good, end_time="2026-11-02T09:31Z"),  # no seconds: Arrow would take it
        # Cached tokens past input_tokens, by a sum past 64 bits.
        _edited(
            good,
            input_tokens=2**63 - 1,
            cache_read_input_tokens=2**62,
            cache_creation_input_tokens=2**62,
        ),
        b"{not json",
    ]
    records = _records([encode(good), *bad, encode(make_priced())])

    rows = decode_priced("t.priced", 0, records)

    assert rows.table["_offset"].to_pylist() == [0, len(records) - 1]
    assert [offset for offset, _ in rows.rejected] == list(range(1, len(records) - 1))


# -- the sink on the broker ------------------------------------------------------------------


async def test_priced_events_land_in_the_lake_row_for_row(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    events = spread_events(240)
    placed = await produce(kafka_settings, broker, topics.priced, priced_records(events))
    lake = tmp_path / "lake"

    async with running_sink(sink_settings(kafka_settings, lake), broker):
        await until_rows(lake, len(events))

    table = lake_table(lake, PRICED)
    assert by_id(table_to_priced(table)) == by_id(events)
    assert sorted(lineage(table)) == sorted(placed)
    for path, name in range_files(lake).items():
        rows = pq.read_table(path)
        day = date.fromisoformat(path.parent.name.removeprefix("date="))
        assert name.topic == topics.priced
        assert {partition_date(t) for t in rows["end_time"].to_pylist()} == {day}
        offsets = rows["_offset"].to_pylist()
        assert set(rows["_partition"].to_pylist()) == {name.partition}
        assert name.first <= min(offsets)
        assert max(offsets) <= name.last


async def test_a_second_copy_of_an_event_is_stored_once_also_across_a_restart(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    first, later = spread_events(60), spread_events(60)
    records = priced_records(first)
    lake = tmp_path / "lake"
    settings = sink_settings(kafka_settings, lake)
    async with running_sink(settings, broker) as sink:
        # The meter published some events twice: the copies sit at later offsets.
        await produce(kafka_settings, broker, topics.priced, records + records[::4])
        await wait_until(lambda: lake_rows(lake) == 60 and _duplicates(sink) == 15)
        await produce(kafka_settings, broker, topics.priced, priced_records(later))
        await until_rows(lake, 120)
    # More copies after a restart, of events in ranges the restart does not read again:
    # only the lake can tell the sink it has them.
    await produce(kafka_settings, broker, topics.priced, records[1::4])
    async with running_sink(settings, broker) as sink:
        # All partitions: the first sink may linger in the group a moment (see the next test).
        every = len(sink.sub_lakes) * topics.partitions
        await wait_until(lambda: len(sink.partitions) == every and sink.caught_up())
        assert _duplicates(sink) == 15

    ids = Counter(lake_table(lake, PRICED)["event_id"].to_pylist())
    assert ids == Counter(str(event.event_id) for event in first + later)


@pytest.mark.parametrize("join_after_s", [0.0, 0.8])
async def test_a_rebalance_while_a_restarted_sink_starts_keeps_its_log_and_counts(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path, join_after_s: float
) -> None:
    """Another member joins (and leaves) while the restarted sink checks its logs: a fetch
    from the committed offsets, begun before the new assignment's seeks, must not reach
    the partitions (it once made a log read from the middle look like a new one), and a
    copy read twice is still one copy dropped."""
    first, later = spread_events(60), spread_events(60)
    records = priced_records(first)
    lake = tmp_path / "lake"
    settings = sink_settings(kafka_settings, lake)
    async with running_sink(settings, broker) as sink:
        await produce(kafka_settings, broker, topics.priced, records + records[::4])
        await produce(kafka_settings, broker, topics.priced, priced_records(later))
        await until_rows(lake, 120)
    await produce(kafka_settings, broker, topics.priced, records[1::4])
    async with running_sink(settings, broker) as sink:
        await asyncio.sleep(join_after_s)
        other = AIOKafkaConsumer(
            *sink.sub_lakes, group_id=sink.group_id, **consumer_options(settings.kafka, broker)
        )
        await other.start()
        try:
            await other.getmany(timeout_ms=1_500)
        finally:
            await other.stop()
        every = len(sink.sub_lakes) * topics.partitions
        await wait_until(lambda: len(sink.partitions) == every and sink.caught_up())
        assert _new_logs(sink) == 0
        assert _duplicates(sink) == 15

    ids = Counter(lake_table(lake, PRICED)["event_id"].to_pylist())
    assert ids == Counter(str(event.event_id) for event in first + later)


def _new_logs(sink: LakeSink) -> float:
    value = sink.metrics.registry.get_sample_value(
        "tollgate_sink_new_log_generations_total", {"sub_lake": PRICED}
    )
    return value or 0


def _duplicates(sink: LakeSink) -> float:
    value = sink.metrics.registry.get_sample_value(
        "tollgate_sink_duplicates_dropped_total", {"sub_lake": PRICED}
    )
    return value or 0


async def test_alerts_and_budget_states_land_in_their_own_sub_lakes(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    alerts = [make_alert(time=T0 + timedelta(minutes=i)) for i in range(6)]
    states = [
        make_state(spent_tokens=100 * i, as_of_time=T0 - timedelta(days=i % 2)) for i in range(8)
    ]
    alert_records = [(b"acme", encode(alert)) for alert in alerts]
    alert_places = await produce(
        kafka_settings, broker, topics.alerts, alert_records + alert_records[:2]
    )
    state_records: list[tuple[bytes | None, bytes | None]] = [(b"k", encode(s)) for s in states]
    state_places = await produce(
        kafka_settings, broker, topics.budget_state, [*state_records, (b"k", None)]
    )
    lake = tmp_path / "lake"

    async with running_sink(sink_settings(kafka_settings, lake), broker):
        await until_rows(lake, len(alerts), ALERTS)
        await until_rows(lake, len(states), BUDGET_STATE)

    got_alerts = lake_table(lake, ALERTS).sort_by("_offset")
    expected = alerts_to_table(alerts, [(topics.alerts, p, o) for p, o in alert_places[:6]])
    assert got_alerts.sort_by("alert_id").equals(expected.sort_by("alert_id"))
    got_states = lake_table(lake, BUDGET_STATE)
    expected = states_to_table(states, [(topics.budget_state, p, o) for p, o in state_places[:8]])
    assert got_states.sort_by("_offset").equals(expected.sort_by("_offset"))  # fmt: skip


async def test_two_sinks_sharing_partitions_through_rebalances_write_each_event_once(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    settings = sink_settings(kafka_settings, lake, sink_roll_rows=20)
    sent: list[PricedEvent] = []
    placed: list[Placed] = []

    async def traffic(chunks: int) -> None:
        for _ in range(chunks):
            chunk = spread_events(30)
            placed.extend(
                await produce(kafka_settings, broker, topics.priced, priced_records(chunk))
            )
            sent.extend(chunk)
            await asyncio.sleep(0.1)

    async with running_sink(settings, broker) as first:
        load = asyncio.create_task(traffic(25))
        await until_rows(lake, 1)
        async with running_sink(settings, broker) as second:  # a rebalance: each takes a share
            await wait_until(lambda: second.metrics.rows_written(PRICED) > 0)
        # The second leaves (writing its buffers first): the first takes everything back.
        await load
        await until_rows(lake, len(sent))
        await asyncio.sleep(0.3)  # a double row would have time to show
    assert first.metrics.rows_written(PRICED) > 0

    table = lake_table(lake, PRICED)
    assert Counter(table["event_id"].to_pylist()) == Counter(str(e.event_id) for e in sent)
    assert sorted(lineage(table)) == sorted(placed)


async def test_a_range_cut_between_its_date_files_is_completed_on_restart(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    events = spread_events(90)
    await produce(kafka_settings, broker, topics.priced, priced_records(events), partition=0)
    lake = tmp_path / "lake"
    settings = sink_settings(kafka_settings, lake, sink_roll_rows=1000)
    async with running_sink(settings, broker):
        await until_rows(lake, len(events))
    # The newest range spans both dates; a crash after its first date file: the second
    # is missing, and a half-written temporary file lies in its place.
    newest = max(range_files(lake).values(), key=lambda name: name.last)
    second = sorted(p for p, n in range_files(lake).items() if n == newest)[-1]
    complete = pq.read_table(second)
    kept = {p: p.stat().st_mtime_ns for p in range_files(lake) if p != second}
    second.unlink()
    second.with_name(second.name + TMP_SUFFIX).write_bytes(b"PAR1 half a file")
    assert lake_rows(lake) < len(events)

    async with running_sink(settings, broker):
        await until_rows(lake, len(events))

    assert pq.read_table(second).equals(complete)  # the same rows, under the same name
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the rest untouched
    assert by_id(table_to_priced(lake_table(lake, PRICED))) == by_id(events)


async def test_a_sink_killed_mid_batch_and_restarted_leaves_every_event_exactly_once(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    env = worker_env(
        kafka_settings,
        broker,
        tmp_path,
        TOLLGATE_KAFKA_SESSION_TIMEOUT_S="1",
        TOLLGATE_LAKE_PATH=str(lake),
        TOLLGATE_LAKE_SINK_ROLL_ROWS="40",
        TOLLGATE_LAKE_SINK_ROLL_S="0.1",
        TOLLGATE_LOG_LEVEL="info",
        TOLLGATE_LAKE_SINK_METRICS_PORT=str(metrics_port := free_port()),
    )
    sent: list[PricedEvent] = []
    placed: list[Placed] = []
    reader = _LakeReader(lake)
    sink = _SinkProcess(env, tmp_path / "sink.log").start()

    async def traffic(chunks: int) -> None:
        for _ in range(chunks):
            chunk = spread_events(60)
            placed.extend(
                await produce(kafka_settings, broker, topics.priced, priced_records(chunk))
            )
            sent.extend(chunk)
            await asyncio.sleep(0.05)

    try:
        reader.start()
        await traffic(2)
        await until_rows(lake, 1, timeout_s=30)  # it is running
        load = asyncio.create_task(traffic(20))
        await asyncio.sleep(0.5)
        sink.kill()  # while ranges are being written, many a buffer half full
        at_kill = lake_rows(lake)
        sink = _SinkProcess(env, tmp_path / "sink.log").start()
        await load
        assert 0 < at_kill < len(sent)
        await until_rows(lake, len(sent), timeout_s=45)
        await asyncio.sleep(0.5)  # a double row would have time to show
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        sink.stop()
        reader.stop()

    table = lake_table(lake, PRICED)
    assert Counter(table["event_id"].to_pylist()) == Counter(str(e.event_id) for e in sent), (
        sink.log()
    )
    assert sorted(lineage(table)) == sorted(placed)  # no offset missing, none twice
    assert reader.errors == []
    assert reader.reads > 0
    written = re.search(r'tollgate_sink_rows_written_total\{sub_lake="priced"\} (\S+)', metrics)
    assert written is not None
    assert 0 < float(written.group(1)) <= len(sent)  # what the restarted sink wrote


class _SinkProcess(StreamWorker):
    """``tollgate sink`` as a child process; ``kill()`` is SIGKILL, ``stop()`` SIGTERM."""

    def start(self) -> _SinkProcess:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollgate.cli", "sink"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self


class _LakeReader:
    """DuckDB over ``*.parquet`` of the priced sub-lake, over and over, in a thread."""

    def __init__(self, lake: Path) -> None:
        self.root = lake / PRICED
        self.glob = str(self.root / "*" / "*.parquet")
        self.errors: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _read(self) -> None:
        connection = duckdb.connect()
        while not self._stop.wait(0.02):
            if not any(self.root.glob("*/*.parquet")):
                continue
            try:
                connection.execute(f"select count(*) from read_parquet('{self.glob}')").fetchone()
                self.reads += 1
            except duckdb.Error as error:
                self.errors.append(str(error))


async def test_a_broker_that_lost_its_log_starts_a_new_generation_and_loses_nothing(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    own = await start_own_broker(own_broker_port, kafka, topics)
    lake = tmp_path / "lake"
    settings = sink_settings(kafka, lake, sink_roll_rows=10)
    before = spread_events(90)
    async with running_sink(settings, address):
        for chunk in (before[:45], before[45:]):  # two ranges a partition, at least
            for partition in range(3):
                records = priced_records(chunk[partition::3])
                await produce(kafka, address, topics.priced, records, partition)
            await until_rows(lake, len(before) if chunk is before[45:] else 45)
    newest = {n.partition: n for n in range_files(lake).values() if n.last == 29}
    assert sorted(newest) == [0, 1, 2]
    assert all(name.first >= 15 for name in newest.values())
    kill(own)
    await start_own_broker(own_broker_port, kafka, topics)  # empty: offsets from 0 again
    # Partition 0's new log is shorter than the lake's; 1 and 2 grew past it (their
    # offsets exist again, with other records: told apart by the broker timestamp).
    after = spread_events(130)
    await produce(kafka, address, topics.priced, priced_records(after[:10]), partition=0)
    for partition in (1, 2):
        chunk = after[10:][partition - 1 :: 2]
        await produce(kafka, address, topics.priced, priced_records(chunk), partition)

    async with running_sink(settings, address):
        await until_rows(lake, len(before) + len(after))
        await asyncio.sleep(0.5)

    assert by_id(table_to_priced(lake_table(lake, PRICED))) == by_id(before + after)
    generations = {(n.partition, n.generation) for n in range_files(lake).values()}
    assert generations == {(p, g) for p in range(3) for g in (0, 1)}


def recent_events(count: int) -> list[PricedEvent]:
    """Events of several tenants that ended in the last minutes (within the dedupe window)."""
    now = datetime.now(UTC)
    return [
        make_priced(tenant=TENANTS[i % len(TENANTS)], time=now - timedelta(seconds=count - i))
        for i in range(count)
    ]


async def test_events_the_lake_holds_sent_again_to_a_new_broker_are_not_stored_twice(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    """After a broker loss gateways resend what the dead broker had acknowledged. A sink
    started on the new broker knows, from the lake, every recent event of the partition,
    whichever generation it was written in."""
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    own = await start_own_broker(own_broker_port, kafka, topics)
    lake = tmp_path / "lake"
    settings = sink_settings(kafka, lake)
    first, second, third = recent_events(60), recent_events(60), recent_events(30)
    for written, events in ((60, first), (120, second)):
        async with running_sink(settings, address):
            await produce(kafka, address, topics.priced, priced_records(events))
            await until_rows(lake, written)
        kill(own)
        own = await start_own_broker(own_broker_port, kafka, topics)
    generations = {n.generation for n in range_files(lake).values()}
    assert generations == {0, 1}

    await produce(kafka, address, topics.priced, priced_records(first + second + third))
    async with running_sink(settings, address) as sink:
        await until_rows(lake, 150)
        await asyncio.sleep(0.5)
        assert _duplicates(sink) == 120

    ids = Counter(lake_table(lake, PRICED)["event_id"].to_pylist())
    assert ids == Counter(str(event.event_id) for event in first + second + third)


def test_version_1_priced_events_still_reach_the_lake_with_no_token_budget() -> None:
    old = _edited(make_priced(), schema_version=1, token_budget=None)
    new = encode(make_priced(token_budget=2_000))
    rows = decode_priced("t.priced", 0, _records([old, new, old]))
    assert rows.table["_offset"].to_pylist() == [0, 1, 2]
    assert rows.table["token_budget"].to_pylist() == [None, 2_000, None]
