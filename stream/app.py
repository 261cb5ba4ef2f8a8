"""The stream workers' Faust app: meter → budgets, anomalies, alert delivery.

::

    usage ──meter──► priced (for the lake)
              ├────► anomalies (per tenant, in the meter's worker) ──► alerts
              ├────► budget-contributions ──budgets──► budget-state (+ threshold alerts)
              └────► usage.dlq (poison records)
    alerts ──webhooks──► receivers

Each agent reads in batches (``take_events``) and acknowledges a batch only after every
record it produced was acknowledged by the broker: at least once in, exactly once in
effect (ids deduped at the meter, offsets watermarked at the budgets). Both rely on each
partition being read in order, which ``stream.in_order`` makes sure of.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import Message

from stream.anomaly import AnomalyConfig, AnomalyDetector
from stream.budget_definitions import BudgetIndex, load_budgets
from stream.budget_engine import SubjectState
from stream.budget_stage import BudgetStage, ContributionRecord
from stream.direct_reader import Record
from stream.faust_options import faust_options
from stream.meter import Meter, UsageRecord
from stream.metrics import StreamMetrics
from stream.ordered_input import OrderedInput, Process
from stream.partitioned_table import add_table
from stream.rebuild import rebuild_states
from stream.seen_ids import SeenIds
from stream.spend_batch import spends_per_minute
from stream.webhooks import WebhookSender, load_webhook_targets
from tollgate.contract import Alert, BudgetDefinition, decode, encode
from tollgate.kafka import client_options
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

log = logging.getLogger("tollgate.stream")

BATCH_MAX = 1000
BATCH_WITHIN_S = 0.02
"""A batch waits at most this long to fill: the floor of the enforcement lag."""
EXPIRE_EVERY_S = 1.0
TAIL_CHECK_EVERY_S = 1.0
TAIL_MAX = 10 * BATCH_MAX
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

    def ordered(topic: str) -> OrderedInput:
        def acknowledge(records: Sequence[Record]) -> None:
            """Records read around Faust count as done for its commits (``OrderedInput``)."""
            for record in records:
                app.consumer.ack(_message(topic, record))

        return OrderedInput(
            topic, kafka, bootstrap_servers, app.conf.id, metrics.gaps_filled, acknowledge
        )

    usage_input, contributions_input = ordered(topics.usage), ordered(topics.budget_contributions)

    async def meter_records(taken: list[Record]) -> None:
        if not taken:
            return
        records = [UsageRecord(r.partition, r.offset, r.key, r.value, r.timestamp_s) for r in taken]
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
        # Anomalies are watched on the tenants this worker meters: usage is keyed by
        # tenant, so each tenant's baseline lives in one worker.
        found: list[Alert] = []
        for spend in spends_per_minute(out.priced_events, detector.config.bucket_s):
            found += detector.observe(spend)  # type: ignore[arg-type]
        await _publish_alerts(app, topics.alerts, found, metrics)

    @app.agent(usage_topic, concurrency=1)
    async def meter_usage(stream: faust.StreamT[bytes]) -> None:
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await usage_input.take_batch(events, meter_records)

    seeded = asyncio.Event()

    @app.task
    async def seed_budgets_from_the_lake() -> None:
        try:
            stage.seeds.update(
                await _lake_seeds(settings, bootstrap_servers, topics.usage, budgets)
            )
        finally:
            seeded.set()

    async def budget_records(taken: list[Record]) -> None:
        if not taken:
            return
        records = [ContributionRecord(r.partition, r.offset, r.value) for r in taken]
        out = stage.process(records, subjects.get, datetime.now(UTC))
        for key, value in out.writes.items():
            subjects[key] = value
        produce = app.producer.send
        sent = [await produce(topics.budget_state, k, v, None, None, None) for k, v in out.states]
        sent += [await produce(topics.alerts, k, v, None, None, None) for k, v in out.alerts]
        await _delivered(sent)
        metrics.budget_batch(out)

    @app.agent(contributions_topic, concurrency=1)
    async def keep_budgets(stream: faust.StreamT[bytes]) -> None:
        await seeded.wait()
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await contributions_input.take_batch(events, budget_records)

    @app.timer(interval=TAIL_CHECK_EVERY_S)
    async def take_quiet_tails() -> None:
        """A skip at a partition's end leaves no later record to show it (``OrderedInput``)."""
        if app.rebalancing or app.in_recovery or not seeded.is_set():
            return
        actives = app.assignor.assigned_actives()

        async def take(source: OrderedInput, process: Process) -> None:
            assigned = [tp.partition for tp in actives if tp.topic == source.topic]
            try:
                await source.take_quiet_tails(
                    assigned, settings.stream.quiet_partition_s, TAIL_MAX, process
                )
            except Exception:  # tried again later, from the committed offsets
                log.exception("%s: taking quiet partitions' tails failed", source.topic)

        await asyncio.gather(
            take(usage_input, meter_records), take(contributions_input, budget_records)
        )

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
            if value is None:
                subjects.pop(key, None)
            else:
                subjects[key] = value
        await _delivered(await _send_all(app, topics.budget_state, states))

    @app.timer(interval=60.0)
    async def forget_old_usage_ids() -> None:
        seen_ids.expire(time.time())

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **_: Any) -> None:  # type: ignore[misc]
        seen_ids.forget_index()  # rebuilt from the recovered table on next use
        usage_input.forget()
        contributions_input.forget()

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

    @app.service
    class DirectReaders(faust.Service):  # type: ignore[misc]
        async def on_stop(self) -> None:
            await usage_input.close()
            await contributions_input.close()

    return app


def _message(topic: str, record: Record) -> Message:
    return Message(
        topic,
        record.partition,
        record.offset,
        record.timestamp_s,
        0,
        None,
        record.key,
        record.value,
        None,
    )


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
