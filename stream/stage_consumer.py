"""One stage of the stream on a plain consumer in a consumer group: batches in, offsets
committed once their output was delivered.

The meter and the budget stage run here rather than as Faust agents. Faust hands records
over one event at a time (a few hundred µs each, most of a worker's CPU at load), and
around a rebalance it skipped records it had fetched for the previous generation. Here
each poll is one batch (``Stage.process``), committed after its output and its state's
changelog (``stream.changelog``) were delivered: at least once in, and both stages drop a
second count, so exactly once in effect.

Each partition is taken in offset order, none left out: the loop knows the next offset of
each partition it owns (from the group's committed offset when it was taken over), drops
records before it (read again after a seek) and, should a record come past it, seeks back
to the missing one instead of going on. Only records the log no longer holds (removed by
retention before they were read), or offsets that never come after a few tries, are
passed over, with an error logged.

Rebalances: a revocation waits for the batch under way and its commit, then the stage
lets the partitions' state go. An assignment only notes the partitions: the loop then
restores their state and positions them at the committed offsets before it takes a
record of theirs, tried again until it works. (aiokafka sends no heartbeats while its
rebalance listener runs, and ignores what the listener raises: a restore there could
cost the membership, or fail unseen.) A batch whose processing fails makes every
partition start over the same way.

A broker that lost its history (``stream.broker_loss``) shows here first: a partition's
committed offset went missing or backwards since this consumer committed it, or its log
ends before records already processed. The consumer reports it to its ``LossWatch`` and
stops, taking no record of the new log with the old state.

What this cannot fence off is a member that stalls past its session timeout in the
middle of a batch: the group gives its partitions to another worker without a
revocation, and the writes it makes when it wakes up land late. Kafka Streams fences
those with transactions, which the embedded broker does not have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter

from stream.broker_loss import LossWatch
from tollgate.kafka import consumer_options, leave_group
from tollgate.settings import KafkaSettings

log = logging.getLogger("tollgate.stream")

Records = list[ConsumerRecord[bytes, bytes]]

POLL_MS = 100
RETRY_AFTER_FAILURE_S = 1.0
SEEKS_BEFORE_PASSING_OVER = 3
"""Seeks back to the same missing offset before the offsets that never come are passed
over (a log with holes would otherwise hold its partition still for ever)."""
_FETCH_BYTES = 4 << 20


class Stage(Protocol):
    """What a stage does with its partitions; all of it runs in the consumer's task."""

    async def take_over(self, partitions: set[int]) -> None:
        """Have the state of ``partitions`` ready (restored from the changelog)."""

    def let_go(self, partitions: set[int]) -> None:
        """Forget the state of ``partitions``: another worker may own them now."""

    async def process(self, records: Records) -> None:
        """Process ``records`` (each partition's in offset order); return once every
        output and state change they made was acknowledged by the broker."""

    async def tick(self, partitions: set[int]) -> None:
        """Periodic work on the owned ``partitions`` (windows passing, ids expiring)."""


class StageConsumer:
    def __init__(
        self,
        stage: Stage,
        topic: str,
        group_id: str,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        *,
        batch_max: int,
        tick_every_s: float,
        skipped: Counter | None = None,
        watch: LossWatch | None = None,
        start_at: Callable[[int], int | None] | None = None,
    ) -> None:
        """``start_at``: where a partition starts the first time this consumer takes it
        over, instead of the group's committed offset (None: there), committed at once."""
        self.stage = stage
        self.topic = topic
        self.group_id = group_id
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._batch_max = batch_max
        self._tick_every_s = tick_every_s
        self._skipped = skipped
        self._next: dict[int, int] = {}
        """Per partition taken over, the offset of the next record to process."""
        self._waiting: set[int] = set()
        """Partitions assigned but not taken over yet: state restored, position set."""
        self._seeks: dict[int, tuple[int, int]] = {}
        """Per partition, the offset last sought back to and how many times in a row."""
        self._committed: dict[int, int] = {}
        """Per partition, the offset this consumer last committed (kept after it let the
        partition go: the group's committed offset can only be higher when it comes back)."""
        self._watch = watch or LossWatch()
        self._start_at = start_at
        self._started: set[int] = set()
        """Partitions ``start_at`` was applied to."""
        self._lock = asyncio.Lock()

    @property
    def partitions(self) -> set[int]:
        return set(self._next)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch under way is finished and committed."""
        consumer = AIOKafkaConsumer(
            **consumer_options(self._kafka, self._bootstrap_servers),
            group_id=self.group_id,
            max_partition_fetch_bytes=_FETCH_BYTES,
        )
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        await consumer.start()
        try:
            next_tick = time.monotonic() + self._tick_every_s
            lost = self._watch.lost
            while not stop.is_set() and not lost.is_set():
                if self._waiting:
                    async with self._lock:
                        await self._take_over(consumer)
                    if lost.is_set():
                        break
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=self._batch_max)
                async with self._lock:
                    if self._log_went_back(consumer):
                        break
                    records = await self._in_order(consumer, batches)
                    if records:
                        await self._process(consumer, records)
                    if time.monotonic() >= next_tick:
                        next_tick = time.monotonic() + self._tick_every_s
                        await self._tick(consumer)
        finally:
            await leave_group(consumer)
            await consumer.stop()

    async def _process(self, consumer: AIOKafkaConsumer, records: Records) -> None:
        try:
            await self.stage.process(records)
        except Exception:
            log.exception("%s: a batch failed; every partition starts over", self.topic)
            self._start_over()
            await asyncio.sleep(RETRY_AFTER_FAILURE_S)
            return
        ends: dict[TopicPartition, int] = {}
        for record in records:
            ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
        await self._commit(consumer, ends)

    async def _tick(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self.stage.tick(self.partitions)
        except Exception:
            log.exception("%s: periodic work failed; every partition starts over", self.topic)
            self._start_over()

    async def _in_order(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, Records]
    ) -> Records:
        """The records to process, each partition's from its next offset on, unbroken."""
        taken: Records = []
        for tp, records in batches.items():
            expected = self._next.get(tp.partition)
            if expected is None or not records:
                continue  # fetched before a revocation
            start = 0
            while start < len(records) and records[start].offset < expected:
                start += 1
            end = start
            while end < len(records) and records[end].offset == expected + (end - start):
                end += 1
            if end < len(records):  # a record came past a missing one
                missing = expected + (end - start)
                if not await self._passed_over(consumer, tp, missing, records[end].offset):
                    self._seek(consumer, tp, missing, records[end].offset)
                    taken += records[start:end]
                    if end > start:
                        self._next[tp.partition] = records[end - 1].offset + 1
                    continue
                end = len(records)
            taken += records[start:end]
            if end > start:
                self._next[tp.partition] = records[end - 1].offset + 1
        for partition, (sought, _) in list(self._seeks.items()):
            if sought < self._next.get(partition, sought):  # it came after all
                del self._seeks[partition]
        return taken

    def _seek(self, consumer: AIOKafkaConsumer, tp: TopicPartition, missing: int, got: int) -> None:
        log.warning(
            "%s[%d]: offset %d came where %d was due; reading again from %d",
            self.topic,
            tp.partition,
            got,
            missing,
            missing,
        )
        if self._skipped is not None:
            self._skipped.inc()
        sought, times = self._seeks.get(tp.partition, (missing, 0))
        self._seeks[tp.partition] = (missing, times + 1 if sought == missing else 1)
        consumer.seek(tp, missing)

    async def _passed_over(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, missing: int, got: int
    ) -> bool:
        """Whether the offsets from ``missing`` to ``got`` are gone for good: removed by
        retention, or still missing after a few seeks back."""
        sought, times = self._seeks.get(tp.partition, (None, 0))
        if sought == missing and times >= SEEKS_BEFORE_PASSING_OVER:
            why = f"never came in {times} reads"
        else:
            try:
                start = (await consumer.beginning_offsets([tp]))[tp]
            except KafkaError as error:
                log.warning("%s: where the log starts is unknown (%s)", self.topic, error)
                return False
            if start <= missing:
                return False
            why = "were removed from the log before they were processed"
        log.error(
            "%s[%d]: offsets %d to %d %s; going on without them",
            self.topic,
            tp.partition,
            missing,
            got - 1,
            why,
        )
        self._seeks.pop(tp.partition, None)
        return True

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            # Not committed (the group moved on, or the broker refused): whoever reads these
            # again drops what the state counted already.
            log.info("%s: commit skipped (%s)", self.topic, error)
            return
        for tp, offset in offsets.items():
            self._committed[tp.partition] = offset

    def _log_went_back(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether a partition's log now ends before records processed from it: the
        broker lost it (reported to the watch)."""
        for partition, next_offset in self._next.items():
            end = consumer.highwater(TopicPartition(self.topic, partition))
            if end is not None and end < next_offset:
                self._watch.report(
                    f"{self.topic}[{partition}] ends at offset {end}, "
                    f"before {next_offset} already processed"
                )
                return True
        return False

    def _committed_went_back(self, tp: TopicPartition, committed: int | None) -> bool:
        """Whether the group's committed offset of ``tp`` is missing or lower than this
        consumer committed it: the broker lost it (reported to the watch)."""
        mine = self._committed.get(tp.partition)
        if mine is None or (committed is not None and committed >= mine):
            return False
        self._watch.report(
            f"{self.topic}[{tp.partition}]: the group's committed offset is {committed}, "
            f"{mine} was committed"
        )
        return True

    def _start_over(self) -> None:
        """Every partition taken over again: its state restored from the changelog, its
        position from the committed offset (by the loop, before it reads on)."""
        partitions = self.partitions
        self.stage.let_go(partitions)
        self._next.clear()
        self._waiting |= partitions

    async def _take_over(self, consumer: AIOKafkaConsumer) -> None:
        """Restore and position the partitions waiting; on a failure, try again later."""
        partitions = set(self._waiting)
        try:
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            starts = await consumer.beginning_offsets(tps)
            offsets: dict[TopicPartition, int] = {}
            first_starts: dict[TopicPartition, int] = {}
            for tp in tps:
                committed = await consumer.committed(tp)
                if self._committed_went_back(tp, committed):
                    return  # before any state is restored from the new broker
                start = None
                if self._start_at is not None and tp.partition not in self._started:
                    start = self._start_at(tp.partition)
                if start is not None:
                    offsets[tp] = first_starts[tp] = max(start, starts[tp])
                else:
                    offsets[tp] = (
                        starts[tp] if committed is None or committed < starts[tp] else committed
                    )
            await self.stage.take_over(partitions)
        except Exception:
            log.exception(
                "%s: taking partitions %s over failed; trying again", self.topic, sorted(partitions)
            )
            self.stage.let_go(partitions)
            await asyncio.sleep(RETRY_AFTER_FAILURE_S)
            return
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
            self._next[tp.partition] = offset
        if first_starts:
            await self._commit(consumer, first_starts)
        self._started |= partitions
        self._waiting -= partitions
        log.info("%s: took partitions %s", self.topic, sorted(self._next))

    async def revoked(self, tps: set[TopicPartition]) -> None:
        async with self._lock:  # the batch under way is finished and committed first
            partitions = {tp.partition for tp in tps if tp.topic == self.topic}
            for partition in partitions:
                self._next.pop(partition, None)
                self._seeks.pop(partition, None)
            self._waiting -= partitions
            self.stage.let_go(partitions)

    def assigned(self, tps: set[TopicPartition]) -> None:
        self._waiting |= {tp.partition for tp in tps if tp.topic == self.topic}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: StageConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner.assigned(assigned)
