"""The quality rule as a part of the stream worker: priced events and evaluations in,
``quality_regression`` alerts out to the alerts topic (webhooks and the lake from there,
as every alert).

One consumer in its own group reads both topics. They are keyed alike (by tenant) and
have the same partition count, and the group assigns them by range, so partition *n* of
both goes to the same worker: each tenant's calls and evaluations meet in one detector.
Offsets are committed after each batch's alerts were acknowledged: at least once, and an
alert read twice carries the same id (receivers dedupe by ``X-Tollgate-Alert-Id``).

The detector's memory is not checkpointed: after a restart the calls before the group's
committed offset are not known again, so an evaluation arriving afterwards about such a
call is left out (counted as unmatched). Evaluations come minutes after their call, far
inside the ``max_calls`` a running worker keeps.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from stream.quality import CallFacts, QualityDetector
from tollgate.contract import Alert, EvaluationEvent, decode, encode
from tollgate.errors import ContractError
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

log = logging.getLogger("tollgate.stream")

POLL_MS = 200
TICK_S = 1.0
GRACE_S = 30.0
"""Buckets close this long after they end (in wall-clock time), for late evaluations."""


class QualityWatch:
    def __init__(
        self,
        detector: QualityDetector,
        topics: Topics,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        group_id: str,
        producer: AIOKafkaProducer,
        *,
        grace_s: float = GRACE_S,
    ) -> None:
        self.detector = detector
        self.topics = topics
        self.kafka = kafka
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.producer = producer
        self.grace_s = grace_s
        self.published = 0
        self.refused = 0

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self.topics.priced,
            self.topics.evaluations,
            **consumer_options(self.kafka, self.bootstrap_servers),
            group_id=self.group_id,
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        await consumer.start()
        try:
            next_tick = 0.0
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=5000)
                alerts: list[Alert] = []
                for tp, records in batches.items():
                    priced = tp.topic == self.topics.priced
                    for record in records:
                        alerts += self._take(record.value, priced)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    now = datetime.now(UTC) - timedelta(seconds=self.grace_s)
                    alerts += self.detector.advance(now)
                await self._publish(alerts)
                if batches:
                    await consumer.commit()
        finally:
            await consumer.stop()

    def _take(self, value: bytes | None, priced: bool) -> list[Alert]:
        if value is None:
            return []
        try:
            if priced:
                call = _call(value)
                if call.tenant is None:
                    return []
                facts = CallFacts(
                    call.tenant,
                    call.request_model or call.response_model,
                    call.backend,
                    call.cost_usd,
                )
                return self.detector.remember(call.event_id, facts)
            return self.detector.observe_evaluation(decode(value, EvaluationEvent))
        except (ContractError, msgspec.MsgspecError) as error:
            self.refused += 1
            log.warning("quality rule: a record was refused: %s", error)
            return []

    async def _publish(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        futures = [
            await self.producer.send(self.topics.alerts, encode(a), key=a.subject.encode())
            for a in alerts
        ]
        await asyncio.gather(*futures)
        self.published += len(alerts)
        for alert in alerts:
            log.warning("quality alert: %s", alert.summary)


class _CallWire(msgspec.Struct, gc=False):
    """The few fields of a priced event the rule needs. The meter wrote the record, so the
    contract passed it already; reading six fields costs a fraction of a full decode, and
    this consumer shares its process with the meter."""

    event_id: uuid.UUID
    tenant: str | None
    request_model: str | None = None
    response_model: str | None = None
    backend: str | None = None
    cost_usd: Decimal = Decimal(0)


_call = msgspec.json.Decoder(_CallWire).decode
