"""Records handed to the producer a batch per partition, not one by one.

``AIOKafkaProducer.send`` costs a future, a partitioner call and an accumulator lookup
per record: at thousands of records a second that was a fifth of a worker's CPU. The
stages produce in bursts (a thousand priced events per batch of usage), so they build one
record batch per partition and hand it over whole; the delivery of a burst is a few
futures. Keys go to the partition the producer's default partitioner would choose
(murmur2, as Kafka's Java client), remembered per key, so readers that rely on a key's
partition see no difference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

_KEYS_REMEMBERED = 100_000


class RecordSender:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._partition_counts: dict[str, int] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}

    async def send(
        self, topic: str, records: Iterable[tuple[bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """Send (key, value) records to their keys' partitions; their delivery futures."""
        count = self._partition_counts.get(topic)
        if count is None:
            count = self._partition_counts[topic] = len(await self.producer.partitions_for(topic))
        partition_of = self._partition_of
        if len(partition_of) > _KEYS_REMEMBERED:
            partition_of.clear()
        placed = []
        for key, value in records:
            partition = partition_of.get((topic, key))
            if partition is None:
                partition = partition_of[(topic, key)] = (murmur2(key) & 0x7FFFFFFF) % count
            placed.append((partition, key, value))
        return await self.send_to(topic, placed)

    async def send_to(
        self, topic: str, records: Iterable[tuple[int, bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        """Send (partition, key, value) records, in order within each partition."""
        builders: dict[int, Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for partition, key, value in records:
            builder = builders.get(partition)
            if builder is None:
                builder = builders[partition] = self.producer.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is None:  # full
                futures.append(await self.producer.send_batch(builder, topic, partition=partition))
                builder = builders[partition] = self.producer.create_batch()
                if builder.append(timestamp=None, key=key, value=value) is None:
                    raise ValueError(f"a record for {topic} is larger than a whole batch")
        for partition, builder in builders.items():
            futures.append(await self.producer.send_batch(builder, topic, partition=partition))
        return futures


async def delivered(futures: list[asyncio.Future[Any]]) -> None:
    """Wait until the broker acknowledged every record behind ``futures``."""
    if futures:
        await asyncio.gather(*futures)
