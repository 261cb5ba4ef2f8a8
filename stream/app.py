"""The stream worker: meter → budgets, anomalies, alert delivery, in one process.

::

    usage ──meter──► priced (for the lake)
              ├────► anomalies (per tenant, in the meter's worker) ──► alerts
              ├────► budget-contributions ──budgets──► budget-state (+ threshold alerts)
              └────► usage.dlq (poison records)
    priced + evaluations ──quality──► alerts (a model's or backend's bad share rising)
    alerts ──webhooks──► receivers

The meter and the budgets are the hot path: each runs on a consumer of its own, in batches
(``stream.stage_consumer``), and keeps its state in a changelog table. The Faust app around
them runs the process: it delivers alerts to webhooks (an agent), follows the budget
definitions, seeds budgets from the lake, and starts and stops the stages as services.
At least once in, exactly once in effect: ids deduped at the meter, offsets watermarked
at the budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from datetime import UTC, datetime

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.anomaly import AnomalyConfig, AnomalyDetector
from stream.budget_batches import BudgetBatches
from stream.budget_definitions import BudgetIndex, load_budgets
from stream.budget_engine import SubjectState
from stream.budget_stage import BudgetStage
from stream.changelog import ChangelogTable
from stream.faust_options import faust_options
from stream.meter import Meter
from stream.meter_stage import MeterStage
from stream.metrics import StreamMetrics
from stream.quality import QualityConfig, QualityDetector
from stream.quality_stage import QualityWatch
from stream.rebuild import rebuild_states
from stream.record_sender import RecordSender
from stream.seen_ids import SeenIds
from stream.stage_consumer import Stage, StageConsumer
from stream.webhooks import WebhookSender, load_webhook_targets
from tollgate.contract import Alert, BudgetDefinition, decode
from tollgate.kafka import client_options, producer_options, read_to_high_watermark
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

log = logging.getLogger("tollgate.stream")

BATCH_MAX = 2000
"""Records per batch at most. A batch is what one poll brought: under load a full one,
when quiet the one record there is (no waiting to fill it)."""
TICK_EVERY_S = 1.0
PRODUCE_BATCH_BYTES = 1 << 20
STOP_WAIT_S = 15.0
DEFINITIONS_WAIT_S = 60.0


def build_app(settings: Settings, bootstrap_servers: str) -> faust.App:
    kafka = settings.kafka
    topics = kafka.topics()
    app = faust.App(
        settings.stream.group_id(kafka.topic_prefix), **faust_options(settings, bootstrap_servers)
    )
    alerts_topic = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")

    budgets = BudgetIndex(
        load_budgets(settings.stream.budgets_file) if settings.stream.budgets_file else ()
    )
    batches = BudgetBatches(budgets)
    detector = AnomalyDetector(
        AnomalyConfig(
            bucket_s=settings.stream.anomaly_bucket_s,
            warmup_buckets=settings.stream.anomaly_warmup_buckets,
            min_impact_usd=settings.stream.anomaly_min_impact_usd,
            cooldown_s=settings.stream.anomaly_cooldown_s,
        )
    )
    webhooks = WebhookSender(load_webhook_targets(settings.stream.webhooks_file))
    metrics = StreamMetrics()
    app.tollgate_metrics = metrics  # type: ignore[attr-defined]
    app.tollgate_budgets = budgets  # type: ignore[attr-defined]
    seeded = asyncio.Event()
    definitions_read = asyncio.Event()

    @app.task
    async def seed_budgets_from_the_lake() -> None:
        try:
            batches.seeds.update(
                await _lake_seeds(settings, bootstrap_servers, topics.usage, budgets)
            )
        finally:
            seeded.set()

    @app.agent(alerts_topic, concurrency=1)
    async def deliver_alerts(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            webhooks.deliver(decode(value, Alert))

    @app.task
    async def follow_budget_definitions() -> None:
        await _follow_definitions(
            settings, bootstrap_servers, topics.budget_definitions, budgets, definitions_read
        )

    @app.service
    class Webhooks(faust.Service):  # type: ignore[misc]
        async def on_start(self) -> None:
            await webhooks.start()

        async def on_stop(self) -> None:
            await webhooks.drain(5.0)
            await webhooks.close()

    @app.service
    class Stages(faust.Service):  # type: ignore[misc]
        """The meter and the budgets, each on its consumer, sharing one producer."""

        async def on_start(self) -> None:
            self.stopping = asyncio.Event()
            self.producer = AIOKafkaProducer(
                **producer_options(kafka, bootstrap_servers), max_batch_size=PRODUCE_BATCH_BYTES
            )
            await self.producer.start()
            sender = RecordSender(self.producer)

            def table(topic: str) -> ChangelogTable:
                return ChangelogTable(topic, kafka, bootstrap_servers)

            meter = MeterStage(
                Meter(load_catalog(settings.stream.price_catalog), budgets),
                SeenIds(table(topics.meter_seen_ids), settings.stream.dedupe_window_s),
                detector,
                sender,
                metrics,
                topics,
            )
            budget_stage = BudgetStage(
                batches, table(topics.budget_subjects), sender, metrics, topics
            )

            def consumer(work: Stage, topic: str, name: str) -> StageConsumer:
                return StageConsumer(
                    work,
                    topic,
                    settings.stream.group_id(kafka.topic_prefix, name),
                    kafka,
                    bootstrap_servers,
                    batch_max=BATCH_MAX,
                    tick_every_s=TICK_EVERY_S,
                    skipped=metrics.reread,
                )

            quality = QualityWatch(
                QualityDetector(
                    QualityConfig(
                        bucket_s=settings.stream.quality_bucket_s,
                        warmup_buckets=settings.stream.quality_warmup_buckets,
                        min_evaluations=settings.stream.quality_min_evaluations,
                        min_rise=settings.stream.quality_min_rise,
                        cooldown_s=settings.stream.anomaly_cooldown_s,
                    )
                ),
                topics,
                kafka,
                bootstrap_servers,
                settings.stream.group_id(kafka.topic_prefix, "quality"),
                self.producer,
            )
            metering = consumer(meter, topics.usage, "meter")
            keeping = consumer(budget_stage, topics.budget_contributions, "budgets")

            async def keep_budgets() -> None:
                await seeded.wait()
                # A contribution to a budget not yet known would be dropped as an orphan,
                # and a restored subject of it deleted.
                try:
                    await asyncio.wait_for(definitions_read.wait(), DEFINITIONS_WAIT_S)
                except TimeoutError:
                    log.warning("budget definitions topic not read in time; going on without")
                await keeping.run(self.stopping)

            self.tasks = [
                asyncio.create_task(metering.run(self.stopping), name="meter"),
                asyncio.create_task(keep_budgets(), name="budgets"),
                asyncio.create_task(quality.run(self.stopping), name="quality"),
            ]
            for task in self.tasks:
                task.add_done_callback(_crash_on_failure)

        async def on_stop(self) -> None:
            self.stopping.set()
            _, pending = await asyncio.wait(self.tasks, timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.producer.stop()

    return app


def _crash_on_failure(task: asyncio.Task[None]) -> None:
    """A stage that fails outside a batch (it could not join, say) stops the worker, so
    that its supervisor restarts it, rather than leave it running without the stage."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("the %s stage failed", task.get_name(), exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


async def _lake_seeds(
    settings: Settings, bootstrap_servers: str, usage_topic: str, budgets: BudgetIndex
) -> dict[str, SubjectState]:
    """Budget states rebuilt from the lake's events older than the usage topic's history.

    With a broker that kept its history these are never used (every subject has a stored
    state); after a broker that lost it (the embedded one keeps nothing on disk), they
    carry the open windows' spend over.
    """
    if not settings.lake.path.is_dir() or not len(budgets):
        return {}
    history_start = await _log_start(settings, bootstrap_servers, usage_topic)
    now = datetime.now(UTC)
    seeds = await asyncio.to_thread(
        rebuild_states, settings.lake.path, budgets, now, history_start or now
    )
    if seeds:
        log.warning(
            "rebuilt %d budget subjects from the lake (events before %s)",
            len(seeds),
            (history_start or now).isoformat(),
        )
    return seeds


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
        deadline = time.monotonic() + 10
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


async def _follow_definitions(
    settings: Settings,
    bootstrap_servers: str,
    topic: str,
    budgets: BudgetIndex,
    read: asyncio.Event,
) -> None:
    """Every worker reads every budget definition: the compacted topic, whole, then live.
    ``read`` is set once what the topic held at the start has been applied."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(settings.kafka, bootstrap_servers),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    _apply_definition(budgets, record.key, record.value, record.offset)
            if not read.is_set() and await read_to_high_watermark(consumer):
                read.set()
    finally:
        await consumer.stop()


def _apply_definition(
    budgets: BudgetIndex, key: bytes | None, value: bytes | None, at: int
) -> None:
    if value is None:
        budgets.remove((key or b"").decode())
        return
    try:
        budgets.apply_definition(decode(value, BudgetDefinition))
    except Exception as error:
        log.warning("budget definition at offset %s refused: %s", at, error)
