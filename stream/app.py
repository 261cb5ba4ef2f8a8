"""The stream workers' Faust app: meter → budgets, anomalies, alert delivery.

::

    usage ──meter──► priced ──anomalies──► alerts ──webhooks──► receivers
              └────► budget-contributions ──budgets──► budget-state (+ threshold alerts)
              └────► usage.dlq (poison records)

Each agent reads in batches (``take_events``) and acknowledges a batch only after every
record it produced was acknowledged by the broker: at least once in, exactly once in
effect (ids deduped at the meter, offsets watermarked at the budgets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer

from stream.anomaly import AnomalyDetector
from stream.budget_definitions import BudgetIndex, load_budgets
from stream.budget_stage import BudgetStage, ContributionRecord
from stream.faust_options import faust_options
from stream.meter import Meter, UsageRecord
from stream.metrics import StreamMetrics
from stream.partitioned_table import add_table
from stream.seen_ids import SeenIds
from stream.webhooks import WebhookSender, load_webhook_targets
from tollgate.contract import Alert, BudgetDefinition, PricedEvent, decode, encode
from tollgate.kafka import client_options
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

log = logging.getLogger("tollgate.stream")

BATCH_MAX = 1000
BATCH_WITHIN_S = 0.02
"""A batch waits at most this long to fill: the floor of the enforcement lag."""
EXPIRE_EVERY_S = 1.0
ANOMALY_GRACE_S = 90.0
"""Buckets close this long after they end, so late events still count in them."""


def build_app(settings: Settings, bootstrap_servers: str) -> faust.App:
    kafka = settings.kafka
    topics = kafka.topics()
    app = faust.App(
        f"{topics.prefix}{settings.stream.app_id}", **faust_options(settings, bootstrap_servers)
    )
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    usage_topic = app.topic(topics.usage, **raw)
    priced_topic = app.topic(topics.priced, **raw)
    contributions_topic = app.topic(topics.budget_contributions, **raw)
    alerts_topic = app.topic(topics.alerts, **raw)

    seen_ids = SeenIds(
        add_table(app, "seen-usage-ids", kafka.partitions), settings.stream.dedupe_window_s
    )
    subjects = add_table(app, "budget-subjects", kafka.partitions)

    budgets = BudgetIndex(
        load_budgets(settings.stream.budgets_file) if settings.stream.budgets_file else ()
    )
    meter = Meter(load_catalog(settings.stream.price_catalog), budgets)
    stage = BudgetStage(budgets)
    detector = AnomalyDetector()
    webhooks = WebhookSender(load_webhook_targets(settings.stream.webhooks_file))
    metrics = StreamMetrics()
    app.tollgate_metrics = metrics  # type: ignore[attr-defined]
    app.tollgate_budgets = budgets  # type: ignore[attr-defined]

    @app.agent(usage_topic, concurrency=1)
    async def meter_usage(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            records = [
                UsageRecord(
                    e.message.partition, e.message.offset, e.key, e.value, e.message.timestamp
                )
                for e in events
            ]
            out = meter.process(records, seen_ids.first_offset)
            produce = app.producer.send
            sent = [
                await produce(
                    topics.usage_dlq,
                    dead.key,
                    dead.value,
                    None,
                    None,
                    {
                        "tollgate-error": dead.reason.encode()[:1000],
                        "tollgate-source": _source(topics.usage, dead.partition, dead.offset),
                    },
                )
                for dead in out.dead
            ]
            sent += await _send_all(app, topics.priced, out.priced)
            sent += await _send_all(app, topics.budget_contributions, out.contributions)
            now_s = time.time()
            for partition, entries in out.seen.items():
                seen_ids.record(partition, entries, now_s)
            await _delivered(sent)
            metrics.meter_batch(len(records), out)

    @app.agent(contributions_topic, concurrency=1)
    async def keep_budgets(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            records = [
                ContributionRecord(e.message.partition, e.message.offset, e.value) for e in events
            ]
            out = stage.process(records, subjects.get, datetime.now(UTC))
            for key, value in out.writes.items():
                subjects[key] = value
            produce = app.producer.send
            sent = [
                await produce(topics.budget_state, k, v, None, None, None) for k, v in out.states
            ]
            sent += [await produce(topics.alerts, k, v, None, None, None) for k, v in out.alerts]
            await _delivered(sent)
            metrics.budget_batch(out)

    @app.timer(interval=EXPIRE_EVERY_S)
    async def let_budget_windows_pass() -> None:
        active = {
            tp.partition
            for tp in app.assignor.assigned_actives()
            if tp.topic == contributions_topic.get_topic_name()
        }
        mine = [(k, v) for k, v in list(subjects.items()) if _partition_of(k) in active]
        writes, states = stage.expire(mine, datetime.now(UTC))
        for key, value in writes.items():
            subjects[key] = value
        await _delivered(await _send_all(app, topics.budget_state, states))

    @app.timer(interval=60.0)
    async def forget_old_usage_ids() -> None:
        seen_ids.expire(time.time())

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **_: Any) -> None:  # type: ignore[misc]
        seen_ids.forget_index()  # rebuilt from the recovered table on next use

    @app.agent(priced_topic, concurrency=1)
    async def watch_spend(stream: faust.StreamT[bytes]) -> None:
        async for values in stream.take(BATCH_MAX, within=0.2):
            found: list[Alert] = []
            for value in values:
                found += detector.observe(decode(value, PricedEvent))
            await _publish_alerts(app, topics.alerts, found, metrics)

    @app.timer(interval=10.0)
    async def close_spend_buckets() -> None:
        now = datetime.now(UTC) - timedelta(seconds=ANOMALY_GRACE_S)
        await _publish_alerts(app, topics.alerts, detector.advance(now), metrics)

    @app.agent(alerts_topic, concurrency=1)
    async def deliver_alerts(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            webhooks.deliver(decode(value, Alert))

    @app.task
    async def follow_budget_definitions() -> None:
        await _follow_definitions(settings, bootstrap_servers, topics.budget_definitions, budgets)

    @app.service
    class Webhooks(faust.Service):  # type: ignore[misc]
        async def on_start(self) -> None:
            await webhooks.start()

        async def on_stop(self) -> None:
            await webhooks.drain(5.0)
            await webhooks.close()

    return app


async def _send_all(app: faust.App, topic: str, records: list[tuple[bytes, bytes]]) -> list[Any]:
    """Hand records to the producer (batched by it); returns their delivery futures."""
    send = app.producer.send
    return [await send(topic, key, value, None, None, None) for key, value in records]


async def _delivered(futures: list[Any]) -> None:
    """Wait until the broker acknowledged everything a batch produced."""
    if futures:
        await asyncio.gather(*futures)


async def _publish_alerts(
    app: faust.App, topic: str, alerts: list[Alert], metrics: StreamMetrics
) -> None:
    records = [(alert.subject.encode(), encode(alert)) for alert in alerts]
    await _delivered(await _send_all(app, topic, records))
    metrics.alerts(alerts)


def _source(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}/{partition}/{offset}".encode()


def _partition_of(table_key: bytes) -> int:
    return int(bytes(table_key).split(b"|", 1)[0])


async def _follow_definitions(
    settings: Settings, bootstrap_servers: str, topic: str, budgets: BudgetIndex
) -> None:
    """Every worker reads every budget definition: the compacted topic, whole, then live."""
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(settings.kafka, bootstrap_servers),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async for record in consumer:
            if record.value is None:
                budgets.remove((record.key or b"").decode())
                continue
            try:
                budgets.apply_definition(decode(record.value, BudgetDefinition))
            except Exception as error:
                log.warning("budget definition at offset %s refused: %s", record.offset, error)
    finally:
        await consumer.stop()
