"""One agent's input topic, each partition in offset order and none of it left behind.

Faust's batches pass through ``InOrder``: records processed already are dropped, and a gap
Faust left is read from the broker and put before the records after it. A partition that
has been quiet for a while is read from its next offset on, so that a skip at its end is
found too (``stream.in_order`` says why both happen). Batches and tails are processed
under one lock, so the agent and the timer that takes tails never interleave; a tail is
read before taking the lock, so the agent never waits on that read.

Records read directly are acknowledged to Faust once processed (``acknowledge``): Faust
commits a partition only up to its first offset not acknowledged, so a skipped record it
never delivered would hold the group's committed offset back for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aiokafka import TopicPartition
from prometheus_client import Counter

from stream.direct_reader import DirectReader, Record
from stream.in_order import InOrder
from tollgate.group_offsets import group_resume_offsets
from tollgate.settings import KafkaSettings

log = logging.getLogger("tollgate.stream")

Process = Callable[[list[Record]], Awaitable[None]]
"""What an agent does with records, in order; done when its output was delivered."""


class OrderedInput:
    def __init__(
        self,
        topic: str,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        group_id: str,
        read_directly: Counter,
        acknowledge: Callable[[Sequence[Record]], None],
    ) -> None:
        self.topic = topic
        self._lock = asyncio.Lock()
        self._order = InOrder(topic)
        self._forgotten = 0
        """How many times the partitions were revoked: a tail read across a revocation
        may belong to another worker by now, and is dropped."""
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._reader = DirectReader(kafka, bootstrap_servers, topic)
        self._group_id = group_id
        self._read_directly = read_directly
        self._acknowledge = acknowledge

    async def close(self) -> None:
        await self._reader.close()

    def forget(self) -> None:
        """The partitions were revoked: each starts again from its committed offset."""
        self._order.forget()
        self._forgotten += 1

    async def take_batch(self, events: Sequence[Any], process: Process) -> None:
        """Process Faust's ``events`` in their partitions' order, the gaps it left filled."""
        async with self._lock:
            with self._starting_over_on_failure():
                filled, records = await self._batch(events)
                await process(filled + records)
                self._acknowledge(filled)

    async def take_quiet_tails(
        self, assigned: Iterable[int], quiet_s: float, max_records: int, process: Process
    ) -> None:
        """Process what ``assigned`` partitions that had nothing for ``quiet_s`` hold
        beyond what was processed: what Faust should have brought.

        The read happens outside the lock, so the agent's batches never wait on it; what
        the agent processed meanwhile is dropped by ``admit``.
        """
        quiet = self._order.quiet(assigned, quiet_s)
        if not quiet:
            return
        forgotten = self._forgotten
        async with self._lock:
            await self._start(quiet)
            starts = {partition: self._order.next_offset(partition) for partition in quiet}
        records = await self._reader.read_from(starts, max_records)
        if not records:
            return
        async with self._lock:
            if self._forgotten != forgotten:
                return  # revoked meanwhile: these may be another worker's now
            with self._starting_over_on_failure():
                admitted = self._order.admit([(r.partition, r.offset) for r in records])
                taken = [records[index] for index in admitted.indexes]
                self._log_taken(taken, quiet_s)
                await process(taken)
                self._acknowledge(taken)

    @contextmanager
    def _starting_over_on_failure(self) -> Iterator[None]:
        """Records admitted but not processed must not count as processed: on a failure,
        every partition starts over from its committed offset (what lies between is then
        a gap, read again)."""
        try:
            yield
        except BaseException:
            self._order.forget()
            raise

    async def _batch(self, events: Sequence[Any]) -> tuple[list[Record], list[Record]]:
        """(records read to fill gaps, Faust's records to process after them)."""
        await self._start({event.message.partition for event in events})
        admitted = self._order.admit(
            [(event.message.partition, event.message.offset) for event in events]
        )
        filled: list[Record] = []
        for partition, (first, end) in admitted.gaps.items():
            self._read_directly.inc(end - first)
            log.warning(
                "%s[%d]: offsets %d to %d were skipped on the way in; reading them directly",
                self.topic,
                partition,
                first,
                end - 1,
            )
            filled += await self._reader.read_range(partition, first, end)
        return filled, [_record(events[index]) for index in admitted.indexes]

    def _log_taken(self, taken: list[Record], quiet_s: float) -> None:
        for partition in sorted({record.partition for record in taken}):
            offsets = [record.offset for record in taken if record.partition == partition]
            log.warning(
                "%s[%d]: offsets %d to %d did not arrive within %.0f s; read them directly",
                self.topic,
                partition,
                offsets[0],
                offsets[-1],
                quiet_s,
            )
        self._read_directly.inc(len(taken))

    async def _start(self, partitions: Iterable[int]) -> None:
        """Start the partitions new since the last ``forget`` at the group's offsets."""
        unknown = self._order.unknown(partitions)
        if not unknown:
            return
        tps = [TopicPartition(self.topic, partition) for partition in sorted(unknown)]
        resume = await group_resume_offsets(
            self._kafka, self._bootstrap_servers, self._group_id, tps
        )
        for tp, offset in resume.items():
            self._order.start(tp.partition, offset)


def _record(event: Any) -> Record:
    message = event.message
    return Record(message.partition, message.offset, event.key, event.value, message.timestamp)
