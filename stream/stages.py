"""The meter and the budgets on their consumers, from the lake's rebuild on, again after
every broker loss.

Each *run* of the stages starts the way a worker starts: budget states rebuilt from the
lake's events older than the usage topic's history (``stream.rebuild``), the ids of the
lake's events of the last dedupe window known to the meter, the rebuilt states published
if the broker keeps none, then one producer shared by a meter consumer and a budgets
consumer. A run ends when the worker stops, or when a stage consumer sees that the broker
lost its history (``stream.broker_loss``). Then the next run does the same on the new
broker, after fencing off what the old producer may still deliver, and reads the new
usage log from its beginning: what the lake holds of it is dropped by id (it was
rebuilt), the rest is counted once.

So, after a loss, what each event counts is decided by one read of the lake: an event
that ended before the new log's oldest record and is in the lake is in the rebuilt
states and in the meter's ids, and a copy of it on the new broker (a gateway resending
what the dead broker had acknowledged, or the record the old run metered and the sink
wrote) is dropped; any other is counted from the new log. A copy of an event that ended
more than ``TOLLGATE_STREAM_DEDUPE_WINDOW_S`` before the rebuild is not recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream.anomaly import AnomalyDetector
from stream.broker_loss import LossWatch, write_fence
from stream.budget_batches import BudgetBatches
from stream.budget_definitions import BudgetIndex
from stream.budget_stage import BudgetStage
from stream.changelog import FENCE_KEY, ChangelogTable
from stream.meter import Meter
from stream.meter_stage import MeterStage
from stream.metrics import StreamMetrics
from stream.rebuild import LakeRebuild, rebuild_from_lake, rebuilt_budget_states
from stream.record_sender import RecordSender, delivered
from stream.seen_ids import SeenIds
from stream.stage_consumer import Stage, StageConsumer
from tollgate.broker import ensure_topics
from tollgate.contract import encode
from tollgate.errors import BrokerError
from tollgate.kafka import client_options, producer_options, start_producer
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

log = logging.getLogger("tollgate.stream")

BATCH_MAX = 2000
"""Records per batch at most. A batch is what one poll brought: under load a full one,
when quiet the one record there is (no waiting to fill it)."""
TICK_EVERY_S = 1.0
PRODUCE_BATCH_BYTES = 1 << 20
STOP_WAIT_S = 4.0
"""How long a stopping worker lets its stages finish their batch, and then its producer
deliver, so that it exits within 10 s of SIGTERM; a batch cut short is read again
(at least once)."""
DEFINITIONS_WAIT_S = 60.0
RETRY_S = 1.0
HISTORY_READ_S = 10.0


class Stages:
    """Runs the stages until stopped, again after every broker loss."""

    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        budgets: BudgetIndex,
        detector: AnomalyDetector,
        metrics: StreamMetrics,
        definitions_read: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.budgets = budgets
        self.batches = BudgetBatches(budgets)
        self.detector = detector
        self.metrics = metrics
        self.definitions_read = definitions_read
        self.losses = 0
        """Broker losses seen (each one rebuilt and run again)."""

    async def run(self, stopping: asyncio.Event) -> None:
        after_loss = False
        while not stopping.is_set():
            watch = LossWatch()
            await self._run_once(stopping, watch, after_loss=after_loss)
            if not watch.lost.is_set():
                return
            self.losses += 1
            log.error(
                "the broker lost its history (%s): the stages start again from the lake",
                watch.reason,
            )
            after_loss = True

    async def _run_once(
        self, stopping: asyncio.Event, watch: LossWatch, *, after_loss: bool
    ) -> None:
        producer = await self._producer(stopping)
        if producer is None:
            return
        try:
            sender = RecordSender(producer)
            prepared = await self._prepare(sender, stopping, after_loss=after_loss)
            if prepared is None:
                return
            rebuilt, contributions_start = prepared
            metering, keeping = self._consumers(sender, rebuilt, watch, contributions_start)
            stop = asyncio.Event()

            async def keep_budgets() -> None:
                # A contribution to a budget not yet known would be dropped as an orphan,
                # and a restored subject of it deleted.
                try:
                    await asyncio.wait_for(self.definitions_read.wait(), DEFINITIONS_WAIT_S)
                except TimeoutError:
                    log.warning("budget definitions topic not read in time; going on without")
                await keeping.run(stop)

            tasks = [
                asyncio.create_task(metering.run(stop), name="meter"),
                asyncio.create_task(keep_budgets(), name="budgets"),
            ]
            await _until_any([stopping, watch.lost], tasks)
            stop.set()
            await _finish(tasks)
        finally:
            await _close(producer)

    def _consumers(
        self,
        sender: RecordSender,
        rebuilt: LakeRebuild,
        watch: LossWatch,
        contributions_start: dict[int, int] | None,
    ) -> tuple[StageConsumer, StageConsumer]:
        """The meter's and the budgets' consumers, their state seeded from ``rebuilt``.

        After a loss (``contributions_start`` given) the new usage log is read from its
        beginning (what the old run metered of it was fenced off), the contributions from
        after the fence.
        """
        settings, kafka = self.settings, self.settings.kafka
        topics = kafka.topics()
        seen_ids = SeenIds(
            ChangelogTable(topics.meter_seen_ids, kafka, self.bootstrap_servers),
            settings.stream.dedupe_window_s,
        )
        seen_ids.seed_from_lake(rebuilt.event_ids, time.time())
        self.batches.seeds = rebuilt.states
        meter = MeterStage(
            Meter(load_catalog(settings.stream.price_catalog), self.budgets),
            seen_ids,
            self.detector,
            sender,
            self.metrics,
            topics,
        )
        budgets = BudgetStage(
            self.batches,
            ChangelogTable(topics.budget_subjects, kafka, self.bootstrap_servers),
            sender,
            self.metrics,
            topics,
        )

        def consumer(
            stage: Stage, topic: str, name: str, start_at: Callable[[int], int | None] | None
        ) -> StageConsumer:
            return StageConsumer(
                stage,
                topic,
                settings.stream.group_id(kafka.topic_prefix, name),
                kafka,
                self.bootstrap_servers,
                batch_max=BATCH_MAX,
                tick_every_s=TICK_EVERY_S,
                skipped=self.metrics.reread,
                watch=watch,
                start_at=start_at,
            )

        after_loss = contributions_start is not None
        return (
            consumer(meter, topics.usage, "meter", _from_the_beginning if after_loss else None),
            consumer(
                budgets,
                topics.budget_contributions,
                "budgets",
                contributions_start.get if contributions_start is not None else None,
            ),
        )

    async def _no_state_kept(self) -> bool:
        """Whether the broker holds no budget subject's state (a new one, or none spent)."""
        subjects = self.settings.kafka.topics().budget_subjects
        return await _log_start(self.settings, self.bootstrap_servers, subjects) is None

    async def _publish(self, sender: RecordSender, rebuilt: LakeRebuild) -> None:
        """Publish the rebuilt budget states, so that the gateways see the spend before
        the next call (when the broker keeps states, the stored ones are newer)."""
        states = rebuilt_budget_states(rebuilt.states, self.budgets, datetime.now(UTC))
        records = [(state.key().encode(), encode(state)) for state in states]
        await delivered(await sender.send(self.settings.kafka.topics().budget_state, records))

    async def _producer(self, stopping: asyncio.Event) -> AIOKafkaProducer | None:
        """A started producer, tried until the broker answers; None if stopped first."""
        kafka = self.settings.kafka
        while not stopping.is_set():
            producer = AIOKafkaProducer(
                **producer_options(kafka, self.bootstrap_servers),
                max_batch_size=PRODUCE_BATCH_BYTES,
            )
            try:
                # A broker refusing idempotent producers raises BrokerError saying so,
                # with the setting to change: no retry can mend that.
                await start_producer(producer, kafka, self.bootstrap_servers)
                return producer
            except KafkaError as error:
                log.warning("the broker does not answer yet (%s)", error)
                await producer.stop()
                await asyncio.sleep(RETRY_S)
        return None

    async def _prepare(
        self, sender: RecordSender, stopping: asyncio.Event, *, after_loss: bool
    ) -> tuple[LakeRebuild, dict[int, int] | None] | None:
        """Fence (after a loss), rebuild, publish: the rebuild, and where the contributions
        of this run begin (None: at the committed offsets). Tried again while the broker
        does not answer (it may be starting again); None if stopped first."""
        while not stopping.is_set():
            try:
                contributions_start = await self._fence(sender.producer) if after_loss else None
                rebuilt = await self._rebuild()
                if after_loss or await self._no_state_kept():
                    await self._publish(sender, rebuilt)
                return rebuilt, contributions_start
            except (KafkaError, BrokerError) as error:
                log.warning("starting the stages failed (%s); trying again", error)
                await asyncio.sleep(RETRY_S)
        return None

    async def _fence(self, producer: AIOKafkaProducer) -> dict[int, int]:
        """Fence the changelogs and contributions (``stream.broker_loss``); where the
        contributions of this run begin. The topics are created if the new broker lacks
        them."""
        kafka = self.settings.kafka
        topics = kafka.topics()
        await ensure_topics(kafka, self.bootstrap_servers, topics)
        await write_fence(producer, topics.meter_seen_ids, FENCE_KEY, b"")
        await write_fence(producer, topics.budget_subjects, FENCE_KEY, b"")
        return await write_fence(producer, topics.budget_contributions, FENCE_KEY, None)

    async def _rebuild(self) -> LakeRebuild:
        """Budget states and the dedupe window's ids from the lake's events older than
        the usage topic's history (the lake holds nothing newer that counted)."""
        settings = self.settings
        if not settings.lake.path.is_dir():
            return LakeRebuild()
        usage = settings.kafka.topics().usage
        history_start = await _log_start(settings, self.bootstrap_servers, usage)
        now = datetime.now(UTC)
        until = history_start or now
        rebuilt = await asyncio.to_thread(
            rebuild_from_lake,
            settings.lake.path,
            self.budgets,
            now,
            until,
            now - timedelta(seconds=settings.stream.dedupe_window_s),
        )
        if rebuilt.states or rebuilt.event_ids:
            log.warning(
                "rebuilt %d budget subjects and %d recent event ids from the lake "
                "(events before %s)",
                len(rebuilt.states),
                len(rebuilt.event_ids),
                until.isoformat(),
            )
        return rebuilt


def _from_the_beginning(partition: int) -> int:
    return 0


async def _until_any(events: list[asyncio.Event], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until one of ``events`` is set or one of ``tasks`` ends."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait([*waiters, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Let the stages finish their batches, cancel what does not in time; a stage that
    failed raises its error."""
    _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _close(producer: AIOKafkaProducer) -> None:
    """Stop ``producer``, delivering what it holds if that takes no longer than
    ``STOP_WAIT_S``; else cut it off, so that nothing it holds is delivered later (past
    a fence written after it)."""
    try:
        await asyncio.wait_for(producer.stop(), STOP_WAIT_S)
    except (TimeoutError, KafkaError) as error:
        log.warning("the producer did not deliver what it held (%s); dropped", error)
        # aiokafka has no abort: its sender task would go on delivering.
        await producer._sender.close()
        await producer.client.close()


async def _log_start(settings: Settings, bootstrap_servers: str, topic: str) -> datetime | None:
    """When the oldest record still on ``topic`` was written; None if it holds none."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka, bootstrap_servers),
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        waiting = {tp for tp in partitions if ends[tp] > await consumer.position(tp)}
        oldest: float | None = None
        deadline = time.monotonic() + HISTORY_READ_S
        while waiting and time.monotonic() < deadline:
            batches = await consumer.getmany(*waiting, timeout_ms=500, max_records=len(waiting))
            for tp, records in batches.items():
                if records:
                    stamp = records[0].timestamp / 1000
                    oldest = stamp if oldest is None else min(oldest, stamp)
                    waiting.discard(tp)
        return None if oldest is None else datetime.fromtimestamp(oldest, UTC)
    finally:
        await consumer.stop()
