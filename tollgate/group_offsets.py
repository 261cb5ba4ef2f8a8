"""Where a consumer group resumes each partition: its committed offset, else the log's
start. Asked of the broker with clients of our own (``up`` waits on it to stop; the
stream's agents start their in-order check from it)."""

from __future__ import annotations

from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings


async def resume_offsets(
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


async def group_resume_offsets(
    kafka: KafkaSettings,
    bootstrap_servers: str,
    group_id: str,
    partitions: Sequence[TopicPartition],
) -> dict[TopicPartition, int]:
    """``resume_offsets`` with clients opened for the question and closed after it."""
    options = client_options(kafka, bootstrap_servers)
    admin = AIOKafkaAdminClient(**options)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await admin.start()
    try:
        await consumer.start()
        try:
            return await resume_offsets(admin, consumer, group_id, partitions)
        finally:
            await consumer.stop()
    finally:
        await admin.close()
