"""The usage emitter and its spool: no event in the call's way, none lost, none reordered.

Broker outages are real: a Tansu of the test's own on a fixed free port is killed and a
new one started on the same port, so the emitter meets a dead socket and then a broker
that knows nothing (Tansu keeps no data across restarts).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.emitter import UsageEmitter
from gateway.spool import Spool
from tests.factories import make_usage
from tests.own_broker import (
    assert_exactly_once,
    consume,
    kill,
    own_settings,
    start_own_broker,
    wait_until,
)
from tollgate.broker import free_port
from tollgate.contract import Status, UsageEvent, decode, encode
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(30)

FAST = {
    "request_timeout_s": 1.0,
    "send_timeout_s": 2.0,
    "stop_timeout_s": 5.0,
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.3,
}
"""Detect a dead broker and reconnect within a second or so."""

TENANTS = ("acme", "globex", "initech")

# -- worlds --------------------------------------------------------------------------------

MakeEmitter = Callable[..., UsageEmitter]


@pytest.fixture
async def make_emitter(tmp_path: Path) -> AsyncIterator[MakeEmitter]:
    """Build emitters with fast timeouts; every one is stopped at the end of the test."""
    made: list[UsageEmitter] = []

    def make(
        kafka: KafkaSettings,
        bootstrap_servers: str,
        topic: str,
        spool_dir: Path | None = None,
        spool_max_bytes: int = 1 << 30,
        **options: Any,
    ) -> UsageEmitter:
        spool = Spool(spool_dir or tmp_path / "spool", max_bytes=spool_max_bytes)
        emitter = UsageEmitter(kafka, bootstrap_servers, topic, spool, **{**FAST, **options})
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        await emitter.stop()


def assert_in_emit_order_per_tenant(received: list[UsageEvent], sent: list[UsageEvent]) -> None:
    for tenant in TENANTS:
        arrived = [e.event_id for e in received if e.tenant == tenant]
        assert arrived == [e.event_id for e in sent if e.tenant == tenant]


def usage_events(count: int) -> list[UsageEvent]:
    return [make_usage(tenant=TENANTS[i % len(TENANTS)]) for i in range(count)]


# -- the emitter, broker up ----------------------------------------------------------------


async def test_events_emitted_while_the_broker_is_up_arrive_exactly_once(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, make_emitter: MakeEmitter
) -> None:
    emitter = make_emitter(kafka_settings, broker, topics.usage)
    await emitter.start()
    assert emitter.broker_connected

    sent = usage_events(300)
    for event in sent:
        emitter.emit(event)
    await wait_until(lambda: emitter.stats.emitted == len(sent))
    await emitter.stop()

    received = await consume(kafka_settings, broker, topics.usage, len(sent))
    assert_exactly_once(received, {e.event_id for e in sent})
    assert_in_emit_order_per_tenant(received, sent)
    assert emitter.stats.spooled == len(sent)  # every event goes through the log


async def test_emit_returns_at_once_and_its_event_is_set_once_the_record_is_on_disk(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    make_emitter: MakeEmitter,
    tmp_path: Path,
) -> None:
    emitter = make_emitter(kafka_settings, broker, topics.usage)
    await emitter.start()

    sent = usage_events(10_000)
    written = [emitter.emit(event) for event in sent]
    assert emitter.stats.queue_depth == len(sent)
    assert not any(w.is_set() for w in written)
    assert Spool(tmp_path / "spool").pending_records == 0

    for w in written:
        await w.wait()
    assert emitter.stats.spooled == len(sent)
    await wait_until(lambda: emitter.stats.emitted == len(sent))
    received = await consume(kafka_settings, broker, topics.usage, len(sent))
    assert_exactly_once(received, {e.event_id for e in sent})


async def test_concurrent_events_share_one_write(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, make_emitter: MakeEmitter
) -> None:
    emitter = make_emitter(kafka_settings, broker, topics.usage)
    await emitter.start()
    writes = 0
    append = emitter._spool.append

    def counting_append(*args: Any) -> list[int]:
        nonlocal writes
        writes += 1
        return append(*args)

    emitter._spool.append = counting_append  # type: ignore[method-assign]
    written = {id(emitter.emit(event)) for event in usage_events(64)}
    await emitter.stop()
    assert len(written) == 1
    assert writes == 1


# -- the emitter, broker down --------------------------------------------------------------


async def test_events_emitted_while_the_broker_is_down_arrive_once_and_in_order_when_it_is_back(
    kafka_settings: KafkaSettings, own_broker_port: int, make_emitter: MakeEmitter
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    first = await start_own_broker(own_broker_port, kafka, topics)
    emitter = make_emitter(kafka, address, topics.usage)
    await emitter.start()
    before = usage_events(20)
    for event in before:
        emitter.emit(event)
    await wait_until(lambda: emitter.stats.emitted == 20)

    kill(first)
    while_down = usage_events(100)
    for event in while_down:
        emitter.emit(event)
    await wait_until(lambda: emitter.stats.spooled == 20 + len(while_down))
    await wait_until(lambda: not emitter.broker_connected)
    assert emitter.stats.spool_bytes > 0

    await start_own_broker(own_broker_port, kafka, topics)  # empty: Tansu keeps nothing
    after = usage_events(50)
    for event in after:
        emitter.emit(event)
    # The new broker lost the first 20, acknowledged by the old one: they are sent again.
    sent = before + while_down + after
    await wait_until(lambda: emitter.stats.emitted == 20 + len(sent))

    received = await consume(kafka, address, topics.usage, len(sent))
    assert_exactly_once(received, {e.event_id for e in sent})
    assert_in_emit_order_per_tenant(received, sent)
    assert emitter.broker_connected
    assert emitter.stats.resent == 20
    assert emitter.stats.spool_bytes == 0


async def test_an_emitter_started_while_the_broker_is_down_delivers_once_it_is_up(
    kafka_settings: KafkaSettings, own_broker_port: int, make_emitter: MakeEmitter
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    emitter = make_emitter(kafka, address, topics.usage)
    await emitter.start()
    assert not emitter.broker_connected

    sent = usage_events(50)
    for event in sent:
        emitter.emit(event)
    await wait_until(lambda: emitter.stats.spooled == len(sent))

    await start_own_broker(own_broker_port, kafka, topics)
    await wait_until(lambda: emitter.stats.emitted == len(sent))
    assert emitter.broker_connected

    received = await consume(kafka, address, topics.usage, len(sent))
    assert_exactly_once(received, {e.event_id for e in sent})
    assert_in_emit_order_per_tenant(received, sent)


async def test_stop_with_the_broker_down_leaves_every_event_for_the_next_emitter(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    own_broker_port: int,
    make_emitter: MakeEmitter,
    tmp_path: Path,
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    doomed = await start_own_broker(own_broker_port, kafka, topics)
    spool_dir = tmp_path / "shared-spool"
    first = make_emitter(kafka, doomed.bootstrap_servers, topics.usage, spool_dir)
    await first.start()
    assert first.broker_connected

    kill(doomed)  # the emitter does not know yet: its first send has to fail
    sent = usage_events(80)
    for event in sent:
        first.emit(event)
    await first.stop()
    assert first.stats.spooled == len(sent)
    assert Spool(spool_dir).pending_records == len(sent)

    second = make_emitter(kafka_settings, broker, topics.usage, spool_dir)
    await second.start()
    await wait_until(lambda: second.stats.emitted == len(sent))
    await second.stop()

    received = await consume(kafka_settings, broker, topics.usage, len(sent))
    assert_exactly_once(received, {e.event_id for e in sent})
    assert_in_emit_order_per_tenant(received, sent)
    assert Spool(spool_dir).pending_records == 0


async def test_every_event_that_does_not_fit_in_the_spool_is_logged_with_its_id(
    kafka_settings: KafkaSettings,
    make_emitter: MakeEmitter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    emitter = make_emitter(kafka_settings, nowhere, "tollgate.usage.v1", spool_max_bytes=4096)
    await emitter.start()

    sent = usage_events(40)
    for event in sent:
        emitter.emit(event)
    await emitter.stop()

    assert emitter.stats.dropped > 0
    assert emitter.stats.spooled + emitter.stats.dropped == 40
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    kept = {e.event_id for e in sent[: emitter.stats.spooled]}
    for event in sent:
        assert (str(event.event_id) in logged) == (event.event_id not in kept)


async def test_refused_calls_events_never_crowd_out_paid_ones_in_a_full_spool(
    kafka_settings: KafkaSettings,
    make_emitter: MakeEmitter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    framed = 8 + 4 + len(encode(make_usage(tenant="acme")))
    emitter = make_emitter(
        kafka_settings, nowhere, "tollgate.usage.v1", spool_max_bytes=40 * framed
    )
    await emitter.start()
    junk = [refused_call() for _ in range(500)]
    for event in junk:
        emitter.emit(event)
    paid = [make_usage(tenant="acme") for _ in range(30)]
    for event in paid:
        emitter.emit(event)
    await emitter.stop()

    kept = {event.event_id for event in _spooled(tmp_path)}
    assert {e.event_id for e in paid} <= kept
    assert emitter.stats.dropped == len(junk) + len(paid) - emitter.stats.spooled
    assert emitter.stats.spooled - len(paid) <= 4  # refused calls: a tenth of the spool
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert all(str(e.event_id) in logged for e in junk if e.event_id not in kept)


def refused_call() -> UsageEvent:
    return make_usage(
        tenant=None,
        team=None,
        api_key_id=None,
        user=None,
        status=Status.REJECTED_AUTH,
        http_status=401,
        input_tokens=0,
        output_tokens=0,
        cache_read_input_tokens=0,
        reasoning_tokens=0,
    )


def _spooled(spool_dir: Path) -> list[UsageEvent]:
    records = Spool(spool_dir / "spool").read_batch(10_000)[0]
    return [decode(r[4 + int.from_bytes(r[:4]) :], UsageEvent) for r in records]


# -- the spool -----------------------------------------------------------------------------


def records(count: int, start: int = 0) -> list[bytes]:
    return [f"record-{i:04d}".encode() for i in range(start, start + count)]


def test_a_reopened_spool_resumes_with_every_record_in_order(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(records(5))
        spool.append(records(5, start=5))

    with Spool(tmp_path) as reopened:
        assert reopened.pending_records == 10
        assert reopened.size_bytes == spool.size_bytes
        assert reopened.read_batch(100)[0] == records(10)


def test_acknowledged_records_are_not_read_again_after_a_restart(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(records(10))
        batch, cursor = spool.read_batch(4)
        assert batch == records(4)
        spool.ack(cursor)

    with Spool(tmp_path) as reopened:
        assert reopened.pending_records == 6
        rest, cursor = reopened.read_batch(100)
        assert rest == records(6, start=4)
        reopened.ack(cursor)
        assert reopened.pending_records == reopened.size_bytes == 0

    assert Spool(tmp_path).read_batch(100)[0] == []


def test_records_spanning_many_segments_are_read_and_acknowledged_in_order(
    tmp_path: Path,
) -> None:
    with Spool(tmp_path, segment_bytes=64) as spool:
        spool.append(records(50))
    assert len(list(tmp_path.glob("*.seg"))) > 5
    seen: list[bytes] = []
    while Spool(tmp_path).pending_records:
        with Spool(tmp_path, segment_bytes=64) as spool:  # a restart between batches
            batch, cursor = spool.read_batch(7)
            seen += batch
            spool.ack(cursor)
    assert seen == records(50)
    assert len(list(tmp_path.glob("*.seg"))) == 1  # shipped ones are kept no longer


@pytest.mark.parametrize("damage", ["cut mid-record", "garbage appended"])
def test_a_torn_record_at_the_tail_is_ignored_and_earlier_ones_are_kept(
    tmp_path: Path, damage: str
) -> None:
    with Spool(tmp_path) as spool:
        spool.append(records(3))
    (segment,) = tmp_path.glob("*.seg")
    data = segment.read_bytes()
    end = len(data.rstrip(b"\x00"))  # a segment is created full of zeros
    if damage == "cut mid-record":  # the last record's last bytes never reached the disk
        torn = data[: end - 5] + bytes(len(data) - end + 5)
    else:  # a record half-written after the last one
        torn = data[:end] + b"\x00\x00\x00\x09partial" + data[end + 15 :]
    segment.write_bytes(torn)

    with Spool(tmp_path) as reopened:
        expected = records(2) if damage == "cut mid-record" else records(3)
        assert reopened.pending_records == len(expected)
        reopened.append([b"after the crash"])
        assert reopened.read_batch(100)[0] == [*expected, b"after the crash"]


def test_a_full_spool_refuses_the_overflow_and_says_which(tmp_path: Path) -> None:
    framed = 8 + len(records(1)[0])
    with Spool(tmp_path, max_bytes=10 * framed) as spool:
        assert spool.append(records(15)) == [10, 11, 12, 13, 14]
        assert spool.pending_records == 10
        assert spool.read_batch(100)[0] == records(10)

        _, cursor = spool.read_batch(3)
        spool.ack(cursor)
        assert spool.append(records(5, start=10)) == [3, 4]


def test_crossing_80_percent_of_the_bound_warns_once_until_usage_falls_below_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    framed = 8 + len(records(1)[0])

    def warnings() -> int:
        return sum(
            r.levelno == logging.WARNING and "full" in r.getMessage() for r in caplog.records
        )

    with (
        caplog.at_level(logging.WARNING, logger="gateway.spool"),
        Spool(tmp_path, max_bytes=10 * framed) as spool,
    ):
        spool.append(records(7))
        assert warnings() == 0
        spool.append(records(1))
        spool.append(records(1))
        assert warnings() == 1
        _, cursor = spool.read_batch(5)
        spool.ack(cursor)
        spool.append(records(4))
        assert warnings() == 2


def test_shipped_records_are_kept_and_a_rewind_makes_them_due_again(tmp_path: Path) -> None:
    with Spool(tmp_path, retain_s=60, segment_bytes=64) as spool:
        spool.append(records(20))
        _, cursor = spool.read_batch(20)
        spool.ack(cursor, {"cluster": "a"})
        assert spool.pending_records == 0
        spool.append(records(2, start=20))

    with Spool(tmp_path, retain_s=60, segment_bytes=64) as reopened:
        assert reopened.mark == {"cluster": "a"}
        assert reopened.rewind({"cluster": "b"}) == 20
        assert reopened.read_batch(100)[0] == records(22)
        assert reopened.mark == {"cluster": "b"}


def test_shipped_records_past_their_retention_are_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path, retain_s=0, segment_bytes=64) as spool:
        spool.append(records(20))
        _, cursor = spool.read_batch(20)
        spool.ack(cursor)
        assert len(list(tmp_path.glob("*.seg"))) == 1  # the one appended to, kept
        assert spool.rewind() < 20


def test_shipped_records_give_way_to_new_ones_when_the_spool_is_full(tmp_path: Path) -> None:
    framed = 8 + len(records(1)[0])
    with Spool(tmp_path, max_bytes=10 * framed, segment_bytes=2 * framed, retain_s=3600) as spool:
        spool.append(records(10))
        _, cursor = spool.read_batch(10)
        spool.ack(cursor)
        assert spool.append(records(8, start=10)) == []
        assert spool.disk_bytes <= 10 * framed


def test_the_spool_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory) as spool:
        spool.append(records(3))
        _, cursor = spool.read_batch(3)
        spool.ack(cursor)
    assert directory.stat().st_mode & 0o777 == 0o700
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name


def test_an_unsynchronous_spool_writes_at_once_what_another_opener_reads(tmp_path: Path) -> None:
    """Without ``synchronous`` an append is a write into the page cache: a process killed
    right after it loses nothing (the next opener reads it), and ``append_now`` does it on
    the caller's thread whenever nothing could hold it up."""
    spool = Spool(tmp_path, synchronous=False)
    spool.append(records(1))  # opens the first segment
    assert spool.append_now(records(5, start=1), [False] * 5) == []
    assert Spool(tmp_path).read_batch(100)[0] == records(6)  # as after a SIGKILL
    spool.sync()
    spool.close()


def test_append_now_leaves_to_append_what_could_wait_on_the_disk(tmp_path: Path) -> None:
    synchronous = Spool(tmp_path / "sync")
    synchronous.append(records(1))
    assert synchronous.append_now(records(1), [False]) is None  # every write waits on disk

    small = Spool(tmp_path / "small", synchronous=False, segment_bytes=64)
    small.append(records(1))
    assert small.append_now(records(10), [False] * 10) is None  # a new segment is due
    assert small.append(records(10)) == []
    assert small.pending_records == 11


async def test_an_unsynchronous_log_is_synced_every_interval_while_it_is_written(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    class CountingSpool(Spool):
        syncs = 0

        def sync(self) -> None:
            CountingSpool.syncs += 1
            super().sync()

    spool = CountingSpool(tmp_path / "spool", synchronous=False)
    emitter = UsageEmitter(kafka_settings, broker, topics.usage, spool, sync_every_s=0.05)
    await emitter.start()
    try:
        sent = usage_events(50)
        for event in sent:
            await emitter.emit(event).wait()
        await wait_until(lambda: CountingSpool.syncs >= 1, timeout_s=5)
        idle_syncs = CountingSpool.syncs
        await wait_until(lambda: emitter.stats.emitted == len(sent))
        received = await consume(kafka_settings, broker, topics.usage, len(sent))
        assert_exactly_once(received, {e.event_id for e in sent})
    finally:
        await emitter.stop()
    assert CountingSpool.syncs - idle_syncs <= 1  # nothing new written, nothing synced
