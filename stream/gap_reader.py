"""Read a range of one partition straight from the broker, outside the consumer group:
how an agent fills a gap Faust left (``stream.in_order``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

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
