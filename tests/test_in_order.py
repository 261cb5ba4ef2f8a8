"""Each partition in offset order for the stream's agents: the guard, the reader that
fills a gap from the broker, and the quiet partitions' tails. (The e2e tests kill the
worker under traffic, which is when Faust skips records; they pass only if the gaps and
the tails are taken.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from stream.direct_reader import DirectReader, Record
from stream.in_order import InOrder
from stream.ordered_input import OrderedInput
from tollgate.group_offsets import group_resume_offsets
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics


def test_records_in_order_pass_and_a_partition_starts_where_it_was_assigned() -> None:
    order = InOrder("usage")
    order.start(0, 52)
    order.start(1, 0)
    admitted = order.admit([(0, 52), (1, 0), (0, 53), (1, 1), (0, 54)])
    assert admitted.indexes == [0, 1, 2, 3, 4]
    assert admitted.gaps == {}


def test_a_record_past_a_missing_offset_names_the_gap_to_fill_first() -> None:
    order = InOrder("usage")
    order.start(3, 52)
    order.start(1, 7)
    # 52 and 53 were skipped: 54 came first. Partition 1 is unaffected.
    admitted = order.admit([(3, 54), (1, 7), (3, 55)])
    assert admitted.indexes == [0, 1, 2]
    assert admitted.gaps == {3: (52, 54)}
    # The gap counts as processed: if Faust brings 52 and 53 after all, they are dropped.
    assert order.admit([(3, 52), (3, 53), (3, 56)]).indexes == [2]


def test_records_already_processed_are_dropped() -> None:
    order = InOrder("usage")
    order.start(0, 10)
    assert order.admit([(0, 10), (0, 11)]).indexes == [0, 1]
    assert order.admit([(0, 9), (0, 10), (0, 11), (0, 12)]).indexes == [3]


def test_a_revoked_partition_starts_again_where_its_next_assignment_says() -> None:
    order = InOrder("usage")
    order.start(0, 0)
    assert order.admit([(0, 0), (0, 1), (0, 2)]).indexes == [0, 1, 2]
    order.forget()
    assert order.unknown([0, 1]) == {0, 1}
    order.start(0, 1)  # committed 1: the new owner reads 1 and 2 again
    assert order.admit([(0, 1), (0, 2), (0, 3)]).indexes == [0, 1, 2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_partition_is_quiet_after_a_while_without_records_and_then_checked_again_later() -> None:
    clock = Clock()
    order = InOrder("usage", clock)
    order.start(0, 5)
    assert order.quiet([0, 1], 3.0) == []  # 1 is new here: its quiet time starts now
    clock.now += 2
    order.admit([(0, 5)])
    clock.now += 1.5
    assert order.quiet([0, 1], 3.0) == [1]  # 0 had a record 1.5 s ago
    clock.now += 1.5
    assert order.quiet([0, 1], 3.0) == [0]  # 1 was just checked: its time starts over
    assert order.quiet([0, 1], 3.0) == []
    order.forget()
    assert order.quiet([0], 0.0) == [0]


async def _produce(broker: str, topic: str, partition: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for n in range(count):
            await producer.send(topic, f"{n}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def test_the_tail_reader_returns_what_each_partition_holds_from_an_offset_on(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    await _produce(broker, topics.usage, 0, 12)
    await _produce(broker, topics.usage, 2, 4)

    reader = DirectReader(kafka_settings, broker, topics.usage)
    records = await reader.read_from({0: 9, 2: 1, 1: 0}, 100)

    tail_0, tail_2 = [(0, 9), (0, 10), (0, 11)], [(2, 1), (2, 2), (2, 3)]
    assert [(r.partition, r.offset) for r in records] == tail_0 + tail_2
    assert [r.value for r in records[:3]] == [b"9", b"10", b"11"]
    assert await reader.read_from({0: 12}, 100) == []
    # The same consumer serves the next read, wherever it starts.
    assert [r.offset for r in await reader.read_from({0: 3}, 100)] == list(range(3, 12))
    await reader.close()


def _event(partition: int, offset: int) -> SimpleNamespace:
    """What an agent gets from Faust, as far as ``OrderedInput`` looks."""
    message = SimpleNamespace(partition=partition, offset=offset, timestamp=1.7e9)
    return SimpleNamespace(message=message, key=None, value=f"{offset}".encode())


async def test_records_faust_left_at_a_quiet_partitions_end_are_read_processed_and_acked(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    """Faust delivered offsets 0 to 4, then skipped the rest, and no later record came."""
    await _produce(broker, topics.usage, 1, 20)
    processed: list[int] = []
    acked: list[int] = []

    async def process(records: list[Record]) -> None:
        processed.extend(record.offset for record in records)

    read_directly = Counter("read_directly", "", registry=CollectorRegistry())
    source = OrderedInput(
        topics.usage,
        kafka_settings,
        broker,
        f"{topics.prefix}quiet-test",  # never committed: starts at the log's start
        read_directly,
        lambda records: acked.extend(record.offset for record in records),
    )
    await source.take_batch([_event(1, n) for n in range(5)], process)
    assert processed == [0, 1, 2, 3, 4]
    assert acked == []  # Faust acks what it delivered

    await source.take_quiet_tails([1], 0.0, 100, process)

    assert processed == list(range(20))
    assert acked == list(range(5, 20))
    assert read_directly._value.get() == 15
    # Faust's copies, should they come after all, are not processed again.
    await source.take_batch([_event(1, 7), _event(1, 8)], process)
    await source.take_quiet_tails([1], 0.0, 100, process)
    assert processed == list(range(20))
    await source.close()


async def test_after_a_failed_batch_the_partition_starts_over_from_the_committed_offset(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    await _produce(broker, topics.usage, 2, 6)
    processed: list[int] = []

    async def fail(records: list[Record]) -> None:
        raise RuntimeError("the broker refused the output")

    async def process(records: list[Record]) -> None:
        processed.extend(record.offset for record in records)

    registry = CollectorRegistry()
    source = OrderedInput(
        topics.usage,
        kafka_settings,
        broker,
        f"{topics.prefix}failing-test",
        Counter("read_directly", "", registry=registry),
        lambda records: None,
    )
    with pytest.raises(RuntimeError):
        await source.take_batch([_event(2, n) for n in range(3)], fail)
    # Faust goes on with offset 3: 0 to 2 were never processed and are read again first.
    await source.take_batch([_event(2, 3)], process)
    assert processed == [0, 1, 2, 3]
    await source.close()


async def test_the_direct_reader_returns_exactly_a_range_from_the_broker(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for batch in range(3):  # several record batches, so the range starts mid-batch
            for i in range(10):
                await producer.send(topics.usage, f"{batch * 10 + i}".encode(), partition=1)
            await producer.flush()
    finally:
        await producer.stop()

    reader = DirectReader(kafka_settings, broker, topics.usage)
    records = await reader.read_range(1, 7, 24)
    await reader.close()

    assert [r.offset for r in records] == list(range(7, 24))
    assert [r.value for r in records] == [f"{n}".encode() for n in range(7, 24)]
    assert all(r.partition == 1 and r.timestamp_s > 1e9 for r in records)


async def test_a_partition_starts_at_the_groups_committed_offset_else_at_the_log_start(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for _ in range(5):
            await producer.send(topics.usage, b"x", partition=2)
        await producer.flush()
    finally:
        await producer.stop()
    group = f"{topics.prefix}start-test"
    tp = TopicPartition(topics.usage, 2)
    assert await group_resume_offsets(kafka_settings, broker, group, [tp]) == {tp: 0}

    consumer = AIOKafkaConsumer(
        topics.usage, group_id=group, **consumer_options(kafka_settings, broker)
    )
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=3_000)
        await consumer.commit({tp: 3})
    finally:
        await consumer.stop()
    assert await group_resume_offsets(kafka_settings, broker, group, [tp]) == {tp: 3}
