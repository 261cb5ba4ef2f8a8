"""The lake sink: priced events, alerts, budget states and evaluations from their topics
into the Parquet lake, each record exactly once.

A plain aiokafka consumer in a consumer group (not Faust: the sink owns its offsets).
The group shares the partitions out; the *lake* says where each partition resumes, from
its file names (``stream.sink_files``), never the committed offsets. Those are committed
too, after each range is written, so the group's lag shows in the usual tools.

Exactly once, per partition: ``stream.sink_files`` states the invariant the writes keep,
``stream.sink_partition`` how a start checks the broker's log and completes the newest
range; ``stream.sink_dedupe`` how a second copy of an event is dropped, also one resent
after the broker lost its log.

Rebalances: on revocation the revoked partitions' buffers are dropped (the next owner
reads them again, resuming from the lake), queued writes of theirs are skipped, and a
write already under way is waited for, so the next owner's scan sees it. A fetch begun
before an assignment's seeks (from the committed offsets) never reaches the partitions:
they are read again from where they take up. Kafka starts the next owner only once every
member has given its partitions up, so a partition has one writer at a time. What this
cannot cover is a member that stalls past its session timeout in the middle of a write:
the rows it writes late are double, and compaction drops them.

Writes run in a thread, one at a time in the order ranges were rolled, while the loop
reads on; at most ``_QUEUED`` ranges wait, which bounds memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from stream.gc_tuning import fewer_collections
from stream.sink_dedupe import RecentIds
from stream.sink_files import PartitionHistory, lake_ids, recent_ids, scan, write_range
from stream.sink_metrics import SinkMetrics
from stream.sink_partition import PartitionSink, RangeWrite, Taken
from stream.sink_rows import DECODERS, ID_COLUMNS
from tollgate.kafka import consumer_options
from tollgate.lake import ALERTS, BUDGET_STATE, EVALUATIONS, PRICED
from tollgate.settings import Settings

log = logging.getLogger(__name__)

_QUEUED = 8
_POLL_MS = 200
_MAX_RECORDS = 20_000
"""Per poll: decoding this many takes well under the session timeout's heartbeat gap."""
_FETCH_BYTES = 4 << 20
"""Per partition and fetch; aiokafka's 1 MB default halves the throughput."""
_TICK_S = 0.25
_YIELDS = 3


@dataclass(frozen=True)
class _Job:
    tp: TopicPartition
    part: PartitionSink
    write: RangeWrite


class LakeSink:
    """One sink process's consumer, its partitions and its writer."""

    def __init__(
        self, settings: Settings, bootstrap_servers: str, metrics: SinkMetrics | None = None
    ) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.lake = settings.lake.path
        self.metrics = metrics or SinkMetrics()
        topics = settings.kafka.topics()
        self.sub_lakes = {
            topics.priced: PRICED,
            topics.alerts: ALERTS,
            topics.budget_state: BUDGET_STATE,
            topics.evaluations: EVALUATIONS,
        }
        self.group_id = settings.kafka.topic_prefix + settings.lake.sink_group_id
        self.assigned_at: float | None = None
        """When partitions were first assigned (``time.monotonic()``)."""
        self.last_write_at: float | None = None
        self.rows_taken = dict.fromkeys(self.sub_lakes.values(), 0)
        """Rows read and buffered so far, per sub-lake (written or about to be)."""
        self._parts: dict[TopicPartition, PartitionSink] = {}
        self._epoch = 0
        self._counted_to: dict[TopicPartition, tuple[int, int]] = {}
        """Per partition, (generation, offset) below which drops were counted."""
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(_QUEUED)
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Sink until ``stop`` is set; then write every buffer, and return."""
        consumer = AIOKafkaConsumer(
            **consumer_options(self.settings.kafka, self.bootstrap_servers),
            group_id=self.group_id,
            max_partition_fetch_bytes=_FETCH_BYTES,
        )
        consumer.subscribe(list(self.sub_lakes), listener=_Rebalance(self, consumer))
        self._consumer = consumer
        await consumer.start()
        self._writer = asyncio.create_task(self._write_queued(consumer))
        stopped_cleanly = False
        try:
            next_tick = 0.0
            while not stop.is_set():
                self._raise_if_failed()
                epoch = self._epoch
                batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
                for _ in range(_YIELDS):  # let the fetcher send the next fetch: it overlaps
                    await asyncio.sleep(0)  # with decoding this batch
                await self._take(consumer, batches, epoch)
                now = time.monotonic()
                if now >= next_tick:
                    await self._tick(consumer, now)
                    next_tick = now + _TICK_S
            stopped_cleanly = True
            for tp, part in list(self._parts.items()):
                write = part.flush()
                if write is not None:
                    await self._queue.put(_Job(tp, part, write))
            await self._drain()
            self._raise_if_failed()
        finally:
            if not stopped_cleanly:
                self._parts.clear()  # nothing queued is written after a failure
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            await consumer.stop()

    async def _take(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list], epoch: int
    ) -> None:
        """Hand ``batches`` to their partitions. If an assignment ran since ``epoch``,
        when the fetch began, a batch may have been read from the committed offset before
        the assignment's seek: it is dropped, and its partition read again from where
        the partition sink takes up."""
        for tp, records in batches.items():
            part = self._parts.get(tp)
            if part is None or not records:
                continue
            if epoch != self._epoch:
                consumer.seek(tp, part.next_offset)
                continue
            await self._taken(consumer, tp, part, part.take(records, time.monotonic()))

    async def _taken(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, part: PartitionSink, taken: Taken
    ) -> None:
        self._count(tp, part, taken)
        if taken.read_from_beginning:
            self._new_log(part, taken.why)
            await self._know_the_lake(part)
            consumer.seek(tp, 0)
        for write in taken.writes:
            await self._queue.put(_Job(tp, part, write))

    @property
    def partitions(self) -> set[TopicPartition]:
        """The partitions this sink holds now."""
        return set(self._parts)

    def caught_up(self) -> bool:
        """Whether the lake holds every record the broker last said its assigned
        partitions have (their high watermarks)."""
        consumer = self._consumer
        if consumer is None or self.assigned_at is None:
            return False
        for tp, part in list(self._parts.items()):
            highwater = consumer.highwater(tp)
            if highwater is None or (part.written_next or 0) < highwater:
                return False
        return True

    async def _tick(self, consumer: AIOKafkaConsumer, now: float) -> None:
        """Roll buffers that are due; complete ranges the log holds no more of; lag."""
        lag = dict.fromkeys(self.sub_lakes.values(), 0)
        for tp, part in list(self._parts.items()):
            if self._parts.get(tp) is not part:
                continue  # revoked while an earlier partition waited
            highwater = consumer.highwater(tp)
            changed = part.check_highwater(highwater) if highwater is not None else None
            if changed is not None:
                await self._taken(consumer, tp, part, changed)
                continue
            write = part.due(now)
            if write is None and part.completing:
                with contextlib.suppress(KafkaError):
                    position = await consumer.position(tp)
                    if self._parts.get(tp) is part:
                        write = part.passed(position)
            if write is not None:
                await self._queue.put(_Job(tp, part, write))
            if highwater is not None:
                lag[part.sub_lake] += max(highwater - (part.written_next or 0), 0)
        for sub_lake, records in lag.items():
            self.metrics.lag.labels(sub_lake).set(records)

    def _new_log(self, part: PartitionSink, why: str) -> None:
        self.metrics.generations.labels(part.sub_lake).inc()
        log.warning(
            "%s[%d]: the broker no longer holds the log the lake was written from (%s); "
            "reading its new log from the beginning as generation %d",
            part.topic,
            part.partition,
            why,
            part.generation,
        )

    async def _know_the_lake(self, part: PartitionSink) -> None:
        """Have the new generation drop what the lake already holds of the partition's
        events of the last dedupe window: a gateway resends what the dead broker had
        acknowledged (``TOLLGATE_STREAM_DEDUPE_WINDOW_S``, by the rows' date column)."""
        if part.seen is None or part.id_column is None:
            return
        since = datetime.now(UTC) - timedelta(seconds=self.settings.stream.dedupe_window_s)
        ids = await asyncio.to_thread(
            lake_ids, self.lake, part.sub_lake, part.id_column, part.topic, part.partition, since
        )
        part.seen.know(ids)
        log.info("%s[%d]: %d ids the lake holds known", part.topic, part.partition, len(ids))

    def _count(self, tp: TopicPartition, part: PartitionSink, taken: Taken) -> None:
        """Count (and log) what ``taken`` dropped, once per offset: a rebalance or a
        failed write has records read again."""
        self.rows_taken[part.sub_lake] += taken.rows
        counted_to = self._count_to(tp, part, taken.read_to or 0)
        duplicates = sum(offset >= counted_to for offset in taken.duplicates)
        if duplicates:
            self.metrics.duplicates.labels(part.sub_lake).inc(duplicates)
        for offset, reason in taken.rejected:
            if offset < counted_to:
                continue
            self.metrics.rejected.labels(part.sub_lake).inc()
            log.warning(
                "%s[%d]@%d refused, not written: %s", part.topic, part.partition, offset, reason
            )

    def _count_to(self, tp: TopicPartition, part: PartitionSink, offset: int) -> int:
        """Move the partition's counted mark up to ``offset``; the mark it had."""
        generation, counted_to = self._counted_to.get(tp, (part.generation, 0))
        if generation != part.generation:
            counted_to = 0
        self._counted_to[tp] = (part.generation, max(counted_to, offset))
        return counted_to

    async def _write_queued(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            job = await self._queue.get()
            try:
                if self._parts.get(job.tp) is job.part:  # skipped once the partition is gone
                    await self._write(consumer, job)
            finally:
                self._queue.task_done()

    async def _write(self, consumer: AIOKafkaConsumer, job: _Job) -> None:
        write = job.write
        paths = await asyncio.to_thread(
            write_range, self.lake, write.sub_lake, write.name, write.table,
            completing=write.completing,
        )  # fmt: skip
        self.last_write_at = time.monotonic()
        job.part.written(write.name)
        if paths:
            rows = write.table.num_rows
            self.metrics.rows.labels(write.sub_lake).inc(rows)
            self.metrics.files.labels(write.sub_lake).inc(len(paths))
        if write.completing:
            self.metrics.completed.labels(write.sub_lake).inc()
            log.info(
                "%s: newest range completed on start (%d date files written)",
                write.name.file_name,
                len(paths),
            )
        if self._parts.get(job.tp) is job.part:
            try:
                await consumer.commit({job.tp: write.name.last + 1})
            except KafkaError as error:  # a rebalance under way: the lake is what counts
                log.debug("commit of %s skipped: %r", job.tp, error)

    async def _drain(self) -> None:
        """Wait for the queued writes (or for the writer to have failed)."""
        assert self._writer is not None
        joined = asyncio.ensure_future(self._queue.join())
        await asyncio.wait({joined, self._writer}, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            self._writer.result()

    async def revoke(self, revoked: set[TopicPartition]) -> None:
        self._epoch += 1
        for tp in revoked:
            self._parts.pop(tp, None)
        if self._writer is not None:
            await self._drain()

    async def assign(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        try:
            await self._assign(consumer, assigned)
        except Exception as error:  # aiokafka would log it and go on without the partitions
            self._failure = error
            raise

    async def _assign(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        histories: dict[str, dict[tuple[str, int], PartitionHistory]] = {}
        for sub_lake in sorted({self.sub_lakes[tp.topic] for tp in assigned}):
            histories[sub_lake] = await asyncio.to_thread(scan, self.lake, sub_lake)
        parts = {}
        for tp in sorted(assigned):
            sub_lake = self.sub_lakes[tp.topic]
            history = histories[sub_lake].get((tp.topic, tp.partition))
            parts[tp] = await self._partition_sink(sub_lake, tp, history)
        for tp, part in parts.items():
            # Drops below the lake's end were counted by whoever wrote it.
            self._count_to(tp, part, part.written_next or 0)
            # Offset 0 rather than seek_to_beginning, which awaits: an offset before the
            # log's start is reset to it (auto_offset_reset), and no await lets a record
            # fetched from the committed offset in first.
            consumer.seek(tp, part.start_offset or 0)
        self._parts.update(parts)
        self._epoch += 1  # after the seeks: a fetch begun before them read elsewhere
        if self.assigned_at is None:
            self.assigned_at = time.monotonic()
        log.info("assigned %d partitions", len(assigned))

    async def _partition_sink(
        self, sub_lake: str, tp: TopicPartition, history: PartitionHistory | None
    ) -> PartitionSink:
        lake = self.settings.lake
        id_column = ID_COLUMNS.get(sub_lake)
        seen = None
        if id_column is not None and lake.sink_dedupe_offsets:
            seed: dict[str, int] = {}
            if history is not None and history.next_offset is not None:
                since = history.next_offset - lake.sink_dedupe_offsets
                seed = await asyncio.to_thread(recent_ids, history, id_column, since)
            seen = RecentIds(lake.sink_dedupe_offsets, seed)
        return PartitionSink(
            sub_lake,
            tp.topic,
            tp.partition,
            history,
            decoder=DECODERS[sub_lake],
            id_column=id_column,
            seen=seen,
            roll_rows=lake.sink_roll_rows,
            roll_s=lake.sink_roll_s,
        )


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: LakeSink, consumer: AIOKafkaConsumer) -> None:
        self.sink = sink
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sink.revoke(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.sink.assign(self.consumer, assigned)


@dataclass(frozen=True)
class SinkRun:
    """What an in-process run (``sink_until``) did, and how fast."""

    rows: int
    """Priced rows written."""
    files: int
    seconds: float
    """From the partitions' assignment (the group join left out) to the last write."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


async def sink_until(
    settings: Settings, bootstrap_servers: str, rows: int, *, timeout_s: float = 600.0
) -> SinkRun:
    """Run a sink in this process until it has read ``rows`` priced rows, then stop it
    cleanly (which writes them all, without waiting for the buffers' roll time). For
    benchmarks: pre-fill the priced topic, then time this."""
    metrics = SinkMetrics()
    sink = LakeSink(settings, bootstrap_servers, metrics)
    stop = asyncio.Event()
    with fewer_collections():
        task = asyncio.create_task(sink.run(stop))
        try:
            async with asyncio.timeout(timeout_s):
                while sink.rows_taken[PRICED] < rows:
                    if task.done():
                        task.result()
                        raise RuntimeError("the sink stopped before reading every row")
                    await asyncio.sleep(0.01)
        finally:
            stop.set()
            await task
    started = sink.assigned_at or 0.0
    finished = sink.last_write_at or started
    files = metrics.registry.get_sample_value(
        "tollgate_sink_files_written_total", {"sub_lake": PRICED}
    )
    return SinkRun(
        rows=metrics.rows_written(PRICED),
        files=int(files or 0),
        seconds=finished - started,
    )


def run(settings: Settings, bootstrap_servers: str) -> None:
    """Run the sink until SIGINT or SIGTERM; buffers are written on the way out."""
    import uvloop  # installed with Faust; the stream's loop

    uvloop.run(_run_until_signalled(settings, bootstrap_servers))


async def _run_until_signalled(settings: Settings, bootstrap_servers: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    metrics = SinkMetrics()
    metrics.serve(settings.lake.sink_metrics_port)
    log.info("sink writing %s", settings.lake.path)
    with fewer_collections():
        await LakeSink(settings, bootstrap_servers, metrics).run(stop)
