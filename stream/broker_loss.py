"""A broker that lost its history: how a running worker tells, and what it fences off.

The embedded broker keeps nothing on disk. Killed and started again at the same address,
it is an empty broker that every client reconnects to as if nothing had happened: its
topics are created again, empty, and its consumer groups know no offsets. A worker that
went on with its state would count the new log on top of windows it can no longer
restore, and a worker started later would restore nothing. So the stage consumers
(``stream.stage_consumer``) watch for two signs, each impossible on a broker that kept
its history:

- a partition's committed offset is missing, or lower than the consumer committed it;
- a partition's log ends before records the consumer already processed from it.

Either one is reported to a ``LossWatch``; the worker (``stream.stages``) then stops its
stages, rebuilds from the lake as it does at start, fences off what the dead broker's
producer may still deliver late, and starts the stages again.

The fence: one record per partition of each stage's changelog (``FENCE_KEY``; a restore
forgets what came before it) and of the budget contributions (a tombstone; the new
budget stage starts after it). Written by a new producer after the old one was stopped,
so every late write lies before it.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

log = logging.getLogger("tollgate.stream")


class LossWatch:
    """Set once a stage consumer saw that the broker lost its history."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.reason = ""

    def report(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


async def write_fence(
    producer: AIOKafkaProducer, topic: str, key: bytes, value: bytes | None
) -> dict[int, int]:
    """Write one record to every partition of ``topic``; per partition, the offset after
    it (where what is this broker's own begins)."""
    partitions = sorted(await producer.partitions_for(topic))
    futures = [
        await producer.send(topic, value, key=key, partition=partition) for partition in partitions
    ]
    written = await asyncio.gather(*futures)
    return {meta.partition: meta.offset + 1 for meta in written}
