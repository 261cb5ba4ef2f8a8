"""The stream worker: meter → budgets, anomalies, alert delivery, in one process.

::

    usage ──meter──► priced (for the lake)
              ├────► anomalies (per tenant, in the meter's worker) ──► alerts
              ├────► budget-contributions ──budgets──► budget-state (+ threshold alerts)
              └────► usage.dlq (poison records)
    priced + evaluations ──quality──► alerts (a model's or backend's bad share rising)
    alerts ──webhooks──► receivers

The meter and the budgets are the hot path: each runs on a consumer of its own, in batches
(``stream.stage_consumer``), and keeps its state in a changelog table; ``stream.stages``
seeds them from the lake and runs them, again whenever the broker lost its history. The
Faust app around them runs the process: it delivers alerts to webhooks (an agent),
follows the budget definitions, and starts and stops the stages as a service.
At least once in, exactly once in effect: ids deduped at the meter, offsets watermarked
at the budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.anomaly import AnomalyConfig, AnomalyDetector
from stream.budget_definitions import BudgetIndex, load_budgets
from stream.faust_options import faust_options
from stream.metrics import StreamMetrics
from stream.quality import QualityConfig, QualityDetector
from stream.quality_stage import QualityWatch
from stream.stages import STOP_WAIT_S, Stages
from stream.webhooks import WebhookSender, load_webhook_targets
from tollgate.contract import Alert, BudgetDefinition, decode
from tollgate.kafka import (
    client_options,
    producer_options,
    read_to_high_watermark,
    start_producer,
)
from tollgate.settings import Settings

log = logging.getLogger("tollgate.stream")


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
    definitions_read = asyncio.Event()
    stages = Stages(settings, bootstrap_servers, budgets, detector, metrics, definitions_read)
    app.tollgate_stages = stages  # type: ignore[attr-defined]

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
    class RunStages(faust.Service):  # type: ignore[misc]
        """The meter and the budgets (``stream.stages``)."""

        task: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            self.stopping = asyncio.Event()
            self.task = asyncio.create_task(stages.run(self.stopping), name="stages")
            self.task.add_done_callback(_crash_on_failure)

        async def on_stop(self) -> None:
            if self.task is None:  # never started
                return
            self.stopping.set()
            _, pending = await asyncio.wait([self.task], timeout=2 * STOP_WAIT_S)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @app.service
    class WatchQuality(faust.Service):  # type: ignore[misc]
        """The quality rule (``stream.quality_stage``), on a consumer and producer of its own."""

        task: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            self.stopping = asyncio.Event()
            self.producer = AIOKafkaProducer(**producer_options(kafka, bootstrap_servers))
            await start_producer(self.producer, kafka, bootstrap_servers)
            watch = QualityWatch(
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
            self.task = asyncio.create_task(watch.run(self.stopping), name="quality")
            self.task.add_done_callback(_crash_on_failure)

        async def on_stop(self) -> None:
            if self.task is None:  # never started
                return
            self.stopping.set()
            _, pending = await asyncio.wait([self.task], timeout=STOP_WAIT_S)
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
