"""A stage on its own consumer: changelog tables restored whole, partitions taken in order,
offsets committed after the output, a failed batch started over (real broker)."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.changelog import ChangelogTable
from stream.record_sender import RecordSender, delivered
from stream.stage_consumer import Records, StageConsumer
from tollgate.kafka import client_options, consumer_options, producer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics


async def _sender(kafka: KafkaSettings, broker: str) -> RecordSender:
    producer = AIOKafkaProducer(**producer_options(kafka, broker), max_batch_size=1 << 20)
    await producer.start()
    return RecordSender(producer)


async def test_a_restore_has_every_partitions_newest_values_and_no_deleted_keys(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sender = await _sender(kafka_settings, broker)
    table = ChangelogTable(topics.budget_subjects, kafka_settings, broker)
    try:
        for round_ in range(4):
            for key in (b"a", b"b", b"c"):
                table.set(0, key, b"%s-%d" % (key, round_))
            table.set(1, b"z", b"z-%d" % round_)
            if round_ == 3:
                table.delete(0, b"b")
            # One record batch per partition and round: the last batch holds the newest.
            await delivered(await table.write(sender))
    finally:
        await sender.producer.stop()

    restored = ChangelogTable(topics.budget_subjects, kafka_settings, broker)
    read = await restored.restore([0, 1, 2])
    assert read == 4 * 4 + 1
    assert restored.partition(0) == {b"a": b"a-3", b"c": b"c-3"}
    assert restored.partition(1) == {b"z": b"z-3"}
    assert restored.partition(2) == {}
    assert restored.take_changes() == []


class _Counting:
    """A stage that sums record values per partition, its sums kept in a changelog table."""

    def __init__(self, kafka: KafkaSettings, broker: str, topics: Topics, sender: RecordSender):
        self.sender = sender
        self.table = ChangelogTable(topics.budget_subjects, kafka, broker)
        self.seen: list[tuple[int, int]] = []
        self.fail_at: int | None = None
        self.fail_take_overs = 0
        self.restores = 0

    async def take_over(self, partitions: set[int]) -> None:
        await self.table.restore(partitions)
        if self.fail_take_overs:
            self.fail_take_overs -= 1
            raise ConnectionError("the broker went away while restoring")
        self.restores += 1

    def let_go(self, partitions: set[int]) -> None:
        self.table.drop(partitions)

    async def process(self, records: Records) -> None:
        for record in records:
            self.seen.append((record.partition, record.offset))
            total = int(self.table.get(record.partition, b"sum") or b"0")
            self.table.set(record.partition, b"sum", b"%d" % (total + int(record.value or b"0")))
            if record.offset == self.fail_at:
                self.fail_at = None
                raise RuntimeError("the broker went away mid-batch")
        await delivered(await self.table.write(self.sender))

    async def tick(self, partitions: set[int]) -> None:
        pass


async def _until(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_stage_counts_each_record_once_commits_and_starts_over_after_a_failure(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sender = await _sender(kafka_settings, broker)
    values = list(range(1, 41))
    await delivered(await sender.send_to(topics.usage, [(0, b"k", b"%d" % v) for v in values]))
    stage = _Counting(kafka_settings, broker, topics, sender)
    stage.fail_at = 25  # the batch holding offset 25 fails once, after counting part of it
    group = f"{topics.prefix}stage-test"
    consumer = StageConsumer(
        stage, topics.usage, group, kafka_settings, broker, batch_max=10, tick_every_s=1.0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await _until(lambda: stage.table.get(0, b"sum") == b"%d" % sum(values))
        await delivered(await sender.send_to(topics.usage, [(0, b"k", b"100")]))
        await _until(lambda: stage.table.get(0, b"sum") == b"%d" % (sum(values) + 100))
    finally:
        stop.set()
        await task
        await sender.producer.stop()

    assert stage.restores == 2  # once when assigned, once to start over
    assert stage.seen[0] == (0, 0)
    failed = stage.seen.index((0, 25))
    assert [offset for _, offset in stage.seen[: failed + 1]] == list(range(26))
    # Then from the committed offset (the failed batch's start), in order, none left out;
    # the sums above show the failed batch's part-counts were dropped, not kept.
    after = [offset for _, offset in stage.seen[failed + 1 :]]
    assert after[0] <= 25
    assert after == list(range(after[0], 41))

    admin_view = AIOKafkaConsumer(**consumer_options(kafka_settings, broker), group_id=group)
    await admin_view.start()
    try:
        committed = await admin_view.committed(TopicPartition(topics.usage, 0))
    finally:
        await admin_view.stop()
    assert committed == 41


async def test_a_take_over_that_fails_is_tried_again_and_nothing_is_read_before_it_works(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sender = await _sender(kafka_settings, broker)
    await delivered(await sender.send_to(topics.usage, [(2, b"k", b"%d" % v) for v in (5, 7)]))
    stage = _Counting(kafka_settings, broker, topics, sender)
    stage.fail_take_overs = 2
    consumer = StageConsumer(
        stage, topics.usage, f"{topics.prefix}retry-test", kafka_settings, broker,
        batch_max=10, tick_every_s=1.0,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await _until(lambda: stage.table.get(2, b"sum") == b"12")
    finally:
        stop.set()
        await task
        await sender.producer.stop()
    assert stage.fail_take_overs == 0
    assert stage.restores == 1
    assert stage.seen == [(2, 0), (2, 1)]


async def test_a_record_past_a_missing_offset_makes_the_partition_read_again_from_it(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sender = await _sender(kafka_settings, broker)
    await delivered(await sender.send_to(topics.usage, [(1, b"k", b"%d" % i) for i in range(6)]))
    await sender.producer.stop()
    stage_consumer = StageConsumer(
        _Counting(kafka_settings, broker, topics, sender),
        topics.usage,
        f"{topics.prefix}gap-test",
        kafka_settings,
        broker,
        batch_max=100,
        tick_every_s=1.0,
    )
    tp = TopicPartition(topics.usage, 1)
    consumer = AIOKafkaConsumer(**client_options(kafka_settings, broker), group_id=None)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        stage_consumer._next[1] = 2  # offsets 0 and 1 were processed already

        def record(offset: int) -> ConsumerRecord[bytes, bytes]:
            return ConsumerRecord(tp.topic, 1, offset, 0, 0, b"k", b"0", None, 1, 1, ())

        # As a broker that skipped offsets 3 and 4 would hand them over:
        taken = await stage_consumer._in_order(consumer, {tp: [record(o) for o in (1, 2, 5)]})
        assert [r.offset for r in taken] == [2]  # 1 was processed, 5 must wait for 3 and 4
        assert stage_consumer._next[1] == 3
        assert await consumer.position(tp) == 3  # read again from the missing one
        again = await consumer.getmany(tp, timeout_ms=5000)
        taken = await stage_consumer._in_order(consumer, again)
        assert [r.offset for r in taken] == [3, 4, 5]

        # Offsets that never come (a log with a hole) hold the partition a few reads, no more.
        stage_consumer._next[1] = 3
        for _ in range(3):
            assert await stage_consumer._in_order(consumer, {tp: [record(5)]}) == []
            assert await consumer.position(tp) == 3
        taken = await stage_consumer._in_order(consumer, {tp: [record(5)]})
        assert [r.offset for r in taken] == [5]
        assert stage_consumer._next[1] == 6
    finally:
        await consumer.stop()
