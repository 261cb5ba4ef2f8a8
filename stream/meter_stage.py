"""The meter as a stage of the stream: usage records in; priced events, budget
contributions, dead letters, the seen ids' changelog and anomaly alerts out.

``stream.meter`` decides what each record makes; this class reads, sends, and keeps the
seen ids of the usage partitions this worker owns (``stream.stage_consumer`` drives it).
Anomalies are watched on the tenants this worker meters: usage is keyed by tenant, so each
tenant's baseline lives in one worker.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from stream.anomaly import AnomalyDetector
from stream.meter import Meter
from stream.metrics import StreamMetrics
from stream.record_sender import RecordSender, delivered
from stream.seen_ids import SeenIds
from stream.spend_batch import spends_per_minute
from stream.stage_consumer import Records
from stream.unpriced import UnpricedModels
from tollgate.contract import Alert, encode
from tollgate.topics import Topics

ANOMALY_GRACE_S = 90.0
"""Spend buckets close this long after they end, so late events still count in them."""


class MeterStage:
    def __init__(
        self,
        meter: Meter,
        seen_ids: SeenIds,
        detector: AnomalyDetector,
        sender: RecordSender,
        metrics: StreamMetrics,
        topics: Topics,
    ) -> None:
        self.meter = meter
        self.seen_ids = seen_ids
        self.detector = detector
        self.sender = sender
        self.metrics = metrics
        self.topics = topics
        self.unpriced = UnpricedModels()

    async def take_over(self, partitions: set[int]) -> None:
        await self.seen_ids.table.restore(partitions)
        self.seen_ids.index(partitions)

    def let_go(self, partitions: set[int]) -> None:
        self.seen_ids.drop(partitions)

    async def process(self, records: Records) -> None:
        out = self.meter.process(records, self.seen_ids.first_offset)
        now_s = time.time()
        for partition, entries in out.seen.items():
            self.seen_ids.record(partition, entries, now_s)
        topics, send = self.topics, self.sender.send
        futures = [
            await self.sender.producer.send(
                topics.usage_dlq,
                dead.value,
                key=dead.key,
                headers=[
                    ("tollgate-error", dead.reason.encode()[:1000]),
                    ("tollgate-source", f"{topics.usage}/{dead.partition}/{dead.offset}".encode()),
                ],
            )
            for dead in out.dead
        ]
        futures += await send(topics.priced, out.priced)
        futures += await send(topics.budget_contributions, out.contributions)
        futures += await self.seen_ids.table.write(self.sender)
        await delivered(futures)
        self.metrics.meter_batch(len(records), out)
        found: list[Alert] = []
        for spend in spends_per_minute(out.priced_events, self.detector.config.bucket_s):
            found += self.detector.observe(spend)  # type: ignore[arg-type]
        found += self.unpriced.observe(out.priced_events)
        await self._publish(found)

    async def tick(self, partitions: set[int]) -> None:
        self.seen_ids.expire(time.time())
        await delivered(await self.seen_ids.table.write(self.sender))
        now = datetime.now(UTC) - timedelta(seconds=ANOMALY_GRACE_S)
        await self._publish(self.detector.advance(now))

    async def _publish(self, alerts: list[Alert]) -> None:
        if alerts:
            records = [(alert.subject.encode(), encode(alert)) for alert in alerts]
            await delivered(await self.sender.send(self.topics.alerts, records))
            self.metrics.alerts(alerts)
