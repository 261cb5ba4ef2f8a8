"""A stage's state, per input partition, kept in memory and logged to a compacted topic.

A stage (``stream.stage_consumer``) holds state for the partitions it owns: the meter the
ids it has seen, the budget stage each subject's state. Each change is also written to a
*changelog* topic, to the partition of the same number as the input partition, and
delivered before the input offsets are committed. A worker that takes a partition over
(after a restart or a rebalance) reads that changelog partition from its start to its end
and has the state back as of the last change delivered. Input read again after that is
dropped where the state counted it already (the meter by event id at its offset, the
budgets by watermark) and counted where it did not.

On Kafka the changelog is compacted: a restore reads about one record per key still
live (the budgets' subjects; the meter's batches of ids within the dedupe window). A
restore reads to the high watermark its fetches report
(``tollgate.kafka.read_to_high_watermark`` says why not to ``end_offsets``).

After the broker lost its history, a worker writes a *fence* (``FENCE_KEY``) to every
partition before its stages start again (``stream.broker_loss``): what lies before it is
not the new broker's history but writes of the dead one's producers, delivered late. A
restore forgets what it read before the last fence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.record_sender import RecordSender
from tollgate.kafka import client_options, read_to_high_watermark
from tollgate.settings import KafkaSettings

RESTORE_TIMEOUT_S = 120.0
FENCE_KEY = b"\x00tollgate-fence"
"""No stage's key: a key is a state key or a zero-padded offset."""
_READ_MAX = 20_000


class ChangelogTable:
    """Key → value per partition, and the changes not yet written to the changelog."""

    def __init__(self, topic: str, kafka: KafkaSettings, bootstrap_servers: str) -> None:
        self.topic = topic
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._partitions: dict[int, dict[bytes, bytes]] = {}
        self._changes: list[tuple[int, bytes, bytes | None]] = []

    def partition(self, partition: int) -> dict[bytes, bytes]:
        """The state of ``partition`` (read only: change it with ``set`` and ``delete``)."""
        return self._partitions.setdefault(partition, {})

    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.partition(partition).get(key)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self.partition(partition)[key] = value
        self._changes.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        if self.partition(partition).pop(key, None) is not None:
            self._changes.append((partition, key, None))

    def take_changes(self) -> list[tuple[int, bytes, bytes | None]]:
        """(partition, key, value or None for a tombstone) to write, oldest first."""
        changes, self._changes = self._changes, []
        return changes

    async def write(self, sender: RecordSender) -> list[asyncio.Future[Any]]:
        """Hand the changes to the producer, each to its partition; their deliveries."""
        changes = self.take_changes()
        return await sender.send_to(self.topic, changes) if changes else []

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget ``partitions`` (no longer ours, or to be restored again)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
        self._changes = [c for c in self._changes if c[0] in self._partitions]

    async def restore(self, partitions: Iterable[int]) -> int:
        """Read ``partitions`` of the changelog whole; returns how many records were read."""
        wanted = sorted(set(partitions))
        self.drop(wanted)
        if not wanted:
            return 0
        consumer = AIOKafkaConsumer(
            **client_options(self._kafka, self._bootstrap_servers),
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 << 20,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in wanted]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            for tp in tps:
                self._partitions[tp.partition] = {}
            read = 0
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            while not await read_to_high_watermark(consumer):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic}: restoring {wanted} timed out")
                batches = await consumer.getmany(timeout_ms=500, max_records=_READ_MAX)
                for tp, records in batches.items():
                    state = self._partitions[tp.partition]
                    for record in records:
                        if record.key == FENCE_KEY:
                            state.clear()
                        elif record.value is None:
                            state.pop(record.key, None)
                        else:
                            state[record.key] = record.value
                    read += len(records)
            return read
        finally:
            await consumer.stop()
