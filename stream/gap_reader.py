"""One partition straight from the broker, outside Faust: where its group starts it, and
a range of its records. How an agent fills a gap Faust left (``stream.in_order``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings

READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a partition, whichever way it was read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float


async def read_range(
    kafka: KafkaSettings, bootstrap_servers: str, topic: str, partition: int, first: int, end: int
) -> list[Record]:
    """The records of ``topic``[``partition``] at offsets [first, end). An offset the log
    does not hold (removed by retention) is simply absent."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **client_options(kafka, bootstrap_servers),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, first)
        records: list[Record] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] {first}..{end - 1} timed out")
            batches = await consumer.getmany(tp, timeout_ms=500)
            for record in batches.get(tp, []):
                if first <= record.offset < end:
                    records.append(
                        Record(
                            partition,
                            record.offset,
                            record.key,
                            record.value,
                            record.timestamp / 1000,
                        )
                    )
            if not batches:
                await asyncio.sleep(0)
        return records
    finally:
        await consumer.stop()


async def start_offset(
    kafka: KafkaSettings, bootstrap_servers: str, group_id: str, topic: str, partition: int
) -> int:
    """Where ``group_id`` reads ``topic``[``partition``] from when it is assigned: its
    committed offset, else the log's start. Asked of the broker with clients of our own:
    an agent that waits on Faust's consumer thread during a rebalance can deadlock it."""
    tp = TopicPartition(topic, partition)
    options = client_options(kafka, bootstrap_servers)
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id, partitions=[tp])
    finally:
        await admin.close()
    meta = committed.get(tp)
    if meta is not None and meta.offset >= 0:
        return int(meta.offset)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return int((await consumer.beginning_offsets([tp]))[tp])
    finally:
        await consumer.stop()
