"""Tells the other gateway instances, every ``period_s``, what this one claims of each budget.

The announcement is built from the ``BudgetBook`` on the event loop, in one step with no
await inside, so that it and the marks of what was admitted by then agree exactly. It is
sent even when it claims nothing: an instance whose announcements stop is taken for gone
after the share TTL, and an instance whose own announcements do not come back through the
broker stops counting itself a member of the cut (``gateway.budget_shares``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from gateway.budget_book import BudgetBook
from tollgate.contract import encode
from tollgate.kafka import producer_options
from tollgate.settings import KafkaSettings

log = logging.getLogger(__name__)


class ClaimsAnnouncer:
    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        topic: str,
        book: BudgetBook,
        instance_id: str,
        period_s: float,
    ) -> None:
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._book = book
        self._instance_id = instance_id
        self._period_s = period_s
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="claims-announcer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            options = producer_options(self._kafka, self._bootstrap_servers)
            options.update(linger_ms=0, compression_type=None, acks=1, enable_idempotence=False)
            producer = AIOKafkaProducer(**options)
            try:
                await producer.start()
                await self._announce(producer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("claims announcer: %r; reconnecting", error)
            finally:
                with contextlib.suppress(Exception):
                    await producer.stop()
            await asyncio.sleep(self._period_s)

    async def _announce(self, producer: AIOKafkaProducer) -> None:
        key = self._instance_id.encode()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            announcement = self._book.announcement(self._instance_id, datetime.now(UTC))
            if self._book.shares is not None:
                self._book.shares.take_own(announcement)
            # Not awaited one by one: a slow acknowledgement must not stretch the period.
            await producer.send(self._topic, encode(announcement), key=key)
            self.sent += 1
            next_at += self._period_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
