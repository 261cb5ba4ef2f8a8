"""Read partitions straight from the broker, outside the consumer group: how an agent
fills a gap Faust left, or takes a quiet partition's tail (``stream.ordered_input``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings

READ_TIMEOUT_S = 30.0
TAIL_WAIT_MS = 300
"""How long a tail read waits for a partition to bring anything."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record of a partition, whichever way it was read."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float

    @classmethod
    def read(cls, record: ConsumerRecord[bytes, bytes]) -> Record:
        return cls(
            record.partition, record.offset, record.key, record.value, record.timestamp / 1000
        )


class DirectReader:
    """One topic's partitions read straight from the broker, outside any group, with one
    consumer kept open between reads (opening one per read cost the worker CPU that showed
    in the enforcement lag). Reads take turns."""

    def __init__(self, kafka: KafkaSettings, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self._options = client_options(kafka, bootstrap_servers)
        self._consumer: AIOKafkaConsumer | None = None
        self._turn = asyncio.Lock()

    async def read_range(self, partition: int, first: int, end: int) -> list[Record]:
        """The records of ``partition`` at offsets [first, end). An offset the log does
        not hold (removed by retention) is simply absent."""
        tp = TopicPartition(self.topic, partition)
        async with self._positioned({tp: first}) as consumer:
            records: list[Record] = []
            deadline = time.monotonic() + READ_TIMEOUT_S
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reading {self.topic}[{partition}] {first}..{end - 1} timed out"
                    )
                batches = await consumer.getmany(tp, timeout_ms=500)
                records += [Record.read(r) for r in batches.get(tp, []) if first <= r.offset < end]
                if not batches:
                    await asyncio.sleep(0)
            return records

    async def read_from(self, starts: Mapping[int, int], max_records: int) -> list[Record]:
        """What the partitions hold from the offsets in ``starts`` (partition → offset) up
        to their ends as the broker first reports them, at most about ``max_records``:
        each partition's records in offset order. Best effort and bounded in time: what
        the broker does not bring within ``TAIL_WAIT_MS`` is left for another read, and a
        partition that keeps growing is not followed."""
        if not starts:
            return []
        positions = {TopicPartition(self.topic, p): offset for p, offset in starts.items()}
        found: dict[int, list[Record]] = {partition: [] for partition in sorted(starts)}
        async with self._positioned(positions) as consumer:
            ends: dict[TopicPartition, int] = {}
            count = 0
            deadline = time.monotonic() + TAIL_WAIT_MS / 1000
            while count < max_records and (waiting := set(positions) - consumer.paused()):
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    break
                batches = await consumer.getmany(
                    *waiting, timeout_ms=left_ms, max_records=max_records - count
                )
                for tp in waiting:
                    if tp not in ends and (highwater := consumer.highwater(tp)) is not None:
                        ends[tp] = highwater  # where the partition ended when first asked
                    end = ends.get(tp)
                    tail = found[tp.partition]
                    tail += [
                        Record.read(r) for r in batches.get(tp, ()) if end is None or r.offset < end
                    ]
                    count += len(batches.get(tp, ()))
                    read_to = tail[-1].offset + 1 if tail else positions[tp]
                    if end is not None and read_to >= end:
                        consumer.pause(tp)
        return [record for partition in found.values() for record in partition]

    async def close(self) -> None:
        async with self._turn:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await consumer.stop()

    @asynccontextmanager
    async def _positioned(
        self, positions: Mapping[TopicPartition, int]
    ) -> AsyncIterator[AIOKafkaConsumer]:
        """The consumer, assigned ``positions`` only and sought to them. After a failure
        it is closed, and the next read opens a new one."""
        async with self._turn:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    **self._options,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                )
                await consumer.start()
                self._consumer = consumer
            consumer = self._consumer
            try:
                consumer.assign(list(positions))
                consumer.resume(*positions)
                for tp, offset in positions.items():
                    consumer.seek(tp, offset)
                yield consumer
            except BaseException:
                self._consumer = None
                await consumer.stop()
                raise
