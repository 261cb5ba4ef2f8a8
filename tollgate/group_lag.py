"""How far a consumer group is behind its topics: what ``tollgate up`` waits on to stop.

The embedded broker forgets every record when it stops, so a pipeline stopped with work
still on its topics would lose it. ``up`` therefore stops the gateway first and then waits
until the stream workers and the sink have committed everything on their input topics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings


async def group_lag(
    kafka: KafkaSettings,
    bootstrap_servers: str,
    group_id: str,
    topics: Sequence[str],
    timeout_s: float = 10.0,
) -> dict[str, int]:
    """Records on each of ``topics`` that ``group_id`` has not committed yet.

    A partition the group never committed counts from the start of its log. The end of
    each log is its high watermark as a fetch reports it, not ListOffsets' answer: the
    embedded broker's ListOffsets gives the start of the last record batch plus one.
    """
    options = client_options(kafka, bootstrap_servers)
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(
        **options, enable_auto_commit=False, fetch_max_wait_ms=kafka.fetch_max_wait_ms
    )
    await admin.start()
    try:
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, partition)
                for topic in topics
                for partition in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not partitions:
                await asyncio.sleep(0)  # aiokafka's stop() right after start() cancels itself
                return dict.fromkeys(topics, 0)
            done = await _resume_offsets(admin, consumer, group_id, partitions)
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, done[tp])
            async with asyncio.timeout(timeout_s):
                while any(consumer.highwater(tp) is None for tp in partitions):
                    await consumer.getmany(timeout_ms=100, max_records=1)
            ends = {tp: consumer.highwater(tp) or 0 for tp in partitions}
        finally:
            await consumer.stop()
    finally:
        await admin.close()
    lag = dict.fromkeys(topics, 0)
    for tp in partitions:
        lag[tp.topic] += max(ends[tp] - done[tp], 0)
    return lag


async def _resume_offsets(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group_id: str,
    partitions: Sequence[TopicPartition],
) -> dict[TopicPartition, int]:
    """Per partition, the offset ``group_id`` reads next, with started clients."""
    committed = await admin.list_consumer_group_offsets(group_id, partitions=list(partitions))
    starts = await consumer.beginning_offsets(list(partitions))
    resume = {}
    for tp in partitions:
        meta = committed.get(tp)
        resume[tp] = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
    return resume
