"""Budget states, definitions and the other instances' claims into the gateway, continuously.

Every gateway instance reads the whole compacted state and definitions topics: no
consumer group (each instance needs every partition, and a group join would cost seconds
at start-up), all partitions assigned by hand, from the beginning. A state is keyed by
``state.key()``, a definition by its ``budget_id``; a tombstone (no value) forgets its key.
The claims topic is read from its end: only announcements made from now on matter
(``gateway.budget_shares``).

What is guaranteed:

- ``start`` returns at once, whether the broker is up or not; a background task connects,
  retrying with backoff, and reads for as long as the feed runs.
- ``caught_up`` turns true, and the book is told so, once every state and definitions
  partition has been read up to the end offset it had when reading began. It never turns
  false again.
- A record that does not decode, or whose key is not its state's key, is logged, counted
  in ``stats.records_invalid`` and skipped; the feed goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from gateway.budget_book import BudgetBook
from gateway.budget_shares import ShareView
from tollgate.contract import BudgetDefinition, BudgetState, GatewayClaims, decode
from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass
class FeedStats:
    """Live counters for metrics: the feed updates this one object in place."""

    records_applied: int = 0
    """States and definitions taken into the book."""
    claims_taken: int = 0
    """Announcements of gateway instances read."""
    tombstones_applied: int = 0
    """Keys forgotten."""
    records_invalid: int = 0
    """Records skipped because they could not be read."""
    connects: int = 0
    """Times the feed connected and began reading from the beginning."""


class TopicNotReady(Exception):
    """The state topic is not on the broker (yet)."""


class BudgetFeed:
    """Keeps ``book`` in step with the budget-state ``topic``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        topic: str,
        book: BudgetBook,
        *,
        definitions_topic: str | None = None,
        claims_topic: str | None = None,
        shares: ShareView | None = None,
        request_timeout_s: float = 5.0,
        poll_timeout_s: float = 0.2,
        fetch_wait_s: float = 0.1,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._book = book
        self._definitions_topic = definitions_topic
        self._claims_topic = claims_topic if shares is not None else None
        self._shares = shares
        self._request_timeout_s = request_timeout_s
        self._poll_timeout_ms = int(poll_timeout_s * 1000)
        self._fetch_wait_ms = int(fetch_wait_s * 1000)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self.stats = FeedStats()
        self._caught_up = False
        self._task: asyncio.Task[None] | None = None

    @property
    def caught_up(self) -> bool:
        """The topic has been read to its end once (for /readyz)."""
        return self._caught_up

    async def start(self) -> None:
        """Start reading in the background; returns without waiting for the broker."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="budget-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- reading ---------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect and read; on any failure, start over from the beginning after a backoff.

        Starting over re-applies every state, which is harmless: newer records win.
        """
        backoff_s = self._reconnect_min_s
        last_failure = ""
        while True:
            consumer = self._consumer()
            try:
                ends = await self._open(consumer)
                self.stats.connects += 1
                backoff_s, last_failure = self._reconnect_min_s, ""
                await self._read(consumer, ends)
            except Exception as error:
                # One warning per distinct failure, not one per retry of a broker that is down.
                failure = repr(error)
                log.log(
                    logging.DEBUG if failure == last_failure else logging.WARNING,
                    "budget feed: cannot read %s from %s (%s); retrying",
                    self._topic,
                    self._bootstrap_servers,
                    failure,
                )
                last_failure = failure
            finally:
                await self._close(consumer)
            await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
            backoff_s = min(2 * backoff_s, self._reconnect_max_s)

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            **client_options(self._kafka, self._bootstrap_servers),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=int(self._request_timeout_s * 1000),
            retry_backoff_ms=100,
            # Enforcement lag: a broker that does not answer a waiting fetch when records
            # arrive (Tansu) delivers them only when the wait is over.
            fetch_max_wait_ms=self._fetch_wait_ms,
        )

    async def _open(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Connect and assign every partition: states and definitions from the beginning,
        claims from the end. Returns the end offsets to catch up with."""
        async with asyncio.timeout(2 * self._request_timeout_s):
            await consumer.start()
            existing = await consumer.topics()
            from_start = [self._topic]
            if self._definitions_topic is not None:
                from_start.append(self._definitions_topic)
            from_end = [self._claims_topic] if self._claims_topic is not None else []
            assigned: dict[str, list[TopicPartition]] = {}
            for topic in [*from_start, *from_end]:
                partitions = consumer.partitions_for_topic(topic) if topic in existing else None
                if not partitions:
                    raise TopicNotReady(f"topic {topic} does not exist")
                assigned[topic] = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign([tp for tps in assigned.values() for tp in tps])
            beginning = [tp for topic in from_start for tp in assigned[topic]]
            await consumer.seek_to_beginning(*beginning)
            for topic in from_end:
                await consumer.seek_to_end(*assigned[topic])
            return await consumer.end_offsets(beginning)

    async def _read(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        while True:
            if not self._caught_up and await self._reached(consumer, ends):
                self._caught_up = True
                self._book.mark_caught_up()
                log.info("budget feed: caught up with %s (%d states)", self._topic, len(self._book))
            batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms)
            for records in batches.values():
                for record in records:
                    self._take(record)

    @staticmethod
    async def _reached(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for partition, end in ends.items():
            if await consumer.position(partition) < end:
                return False
        return True

    def _take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        try:
            if record.topic == self._claims_topic:
                if record.value is not None and self._shares is not None:
                    self._shares.take(decode(record.value, GatewayClaims), time.monotonic())
                    self.stats.claims_taken += 1
                return
            if key is None:
                raise ValueError("the record has no key")
            if record.topic == self._definitions_topic:
                if record.value is None:
                    self._book.remove_definition(key)
                else:
                    definition = decode(record.value, BudgetDefinition)
                    if definition.budget_id != key:
                        raise ValueError("the record's key is not its definition's budget_id")
                    self._book.apply_definition(definition)
                self.stats.records_applied += 1
                return
            if key is None:
                raise ValueError("the record has no key")
            if record.value is None:
                self._book.remove(key)
                self.stats.tombstones_applied += 1
                return
            state = decode(record.value, BudgetState)
            if state.key() != key:
                raise ValueError(f"the record's key is not its state's key {state.key()!r}")
            # The stream's producer stamps the record: every instance sees the same time.
            self._book.apply(state, record.timestamp / 1000)
            self.stats.records_applied += 1
        except Exception as error:
            self.stats.records_invalid += 1
            log.warning(
                "budget feed: skipped record %r at %s[%d]@%d: %s",
                key,
                record.topic,
                record.partition,
                record.offset,
                error,
            )

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await consumer.stop()
        except Exception as error:
            log.debug("budget feed: consumer did not close cleanly: %r", error)
