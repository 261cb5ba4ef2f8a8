"""How far a consumer group is behind: what `tollgate up` waits on before it stops."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tollgate.group_lag import group_lag
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics


async def test_lag_counts_every_record_the_group_has_not_committed(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        # Three record batches: the embedded broker's ListOffsets would say the log ends
        # at 7 only for the last one (it answers the last batch's start + 1).
        for size in (3, 3, 1):
            for _ in range(size):
                await producer.send(topics.priced, b"x", partition=0)
            await producer.flush()
    finally:
        await producer.stop()
    group = f"{topics.prefix}lag-test"
    assert await group_lag(kafka_settings, broker, group, [topics.priced, topics.alerts]) == {
        topics.priced: 7,
        topics.alerts: 0,
    }

    consumer = AIOKafkaConsumer(
        topics.priced, group_id=group, **consumer_options(kafka_settings, broker)
    )
    await consumer.start()
    try:
        taken = 0
        deadline = time.monotonic() + 15
        while taken < 4:
            assert time.monotonic() < deadline, "the consumer never got its records"
            batches = await consumer.getmany(timeout_ms=500, max_records=4 - taken)
            taken += sum(len(records) for records in batches.values())
        await consumer.commit()
    finally:
        await consumer.stop()
    lag = await group_lag(kafka_settings, broker, group, [topics.priced])
    assert lag == {topics.priced: 3}
