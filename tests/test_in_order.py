"""Each partition in offset order for the stream's agents: the guard, and the reader that
fills a gap from the broker. (The e2e tests kill the worker under traffic, which is when
Faust skips records; they pass only if the gaps are filled.)"""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.gap_reader import read_range
from stream.in_order import InOrder
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


async def test_the_gap_reader_returns_exactly_the_range_from_the_broker(
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

    records = await read_range(kafka_settings, broker, topics.usage, 1, 7, 24)

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
