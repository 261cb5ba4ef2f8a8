"""Usage events from the gateway to the broker: never in the call's way, never lost.

The gateway calls ``emit(event)`` once per AI call. ``emit`` only appends to an in-memory
queue and returns; a background task sends the queue to Kafka in batches. What the broker
cannot take goes to the on-disk ``Spool``, and a second task replays the spool once the
broker is reachable again, acknowledging spooled records only after the broker did.

What is guaranteed:

- ``emit`` never blocks, never waits on the network or the disk, and never raises. (Only
  after ``stop()`` does it write to the spool itself: one fsync rather than a loss.)
- At least once: an event is dropped only when the spool is full or its disk fails (both
  counted in ``stats.dropped`` and logged as ERROR). A send that timed out may still have
  arrived, so consumers dedupe by ``event_id``.
- Order per spool: events that reach the spool are appended in emit order, and while the
  spool holds anything every new event is appended behind it, so the broker receives
  them in emit order. (A batch whose send failed half-way is the exception: its delivered
  part is not repeated, the rest follows through the spool.)
- After ``stop()`` no event is only in memory: each is acknowledged by the broker or in
  the spool. A process killed without ``stop()`` loses what was still in memory.

Failure handling: a dead broker shows as failed or unresolved producer futures. aiokafka
expires a batch after ``request_timeout_s``; idempotent producers never expire theirs, so
every send is also bounded by ``send_timeout_s``. The producer that failed is discarded
and a new one is built on reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from gateway.spool import Spool
from tollgate.contract import EvaluationEvent, UsageEvent, encode
from tollgate.kafka import producer_options
from tollgate.settings import KafkaSettings

log = logging.getLogger(__name__)

_KEY_LENGTH = struct.Struct(">I")
_SPOOL_BATCH_MAX = 10_000
"""Events per spool append: one fsync covers them all."""
_DROP_LOG_INTERVAL_S = 10.0
_LINGER_MS = 25

Item = tuple[bytes, bytes]
"""(key, value) as they go to Kafka."""


@dataclass
class EmitterStats:
    """Live counters for metrics: the emitter updates this one object in place."""

    emitted: int = 0
    """Events the broker acknowledged, directly or from the spool."""
    spooled: int = 0
    """Events written to the spool."""
    replayed: int = 0
    """Spooled events the broker acknowledged later (also counted in ``emitted``)."""
    dropped: int = 0
    """Events lost: the spool was full or could not be written."""
    queue_depth: int = 0
    """Events waiting in memory."""
    spool_bytes: int = 0
    """Bytes waiting in the spool."""


@dataclass
class _Sent:
    delivered: int
    failed: list[Item]
    """Not acknowledged (error or timeout), in the order given."""
    reason: BaseException | None


class UsageEmitter:
    """Sends usage events to ``topic``, keyed by tenant, through a spool when it must.

    Call ``emit`` from the event loop's thread. ``start`` and ``stop`` bracket its life;
    events emitted before ``start`` wait in memory, events emitted after ``stop`` are
    written to the spool at once.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        topic: str,
        spool: Spool,
        *,
        max_queue: int = 100_000,
        batch_max: int = 500,
        request_timeout_s: float = 3.0,
        send_timeout_s: float | None = None,
        stop_timeout_s: float = 10.0,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
    ) -> None:
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._spool = spool
        self._max_queue = max_queue
        self._batch_max = batch_max
        self._request_timeout_s = request_timeout_s
        self._send_timeout_s = send_timeout_s or 2 * request_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s

        self.stats = EmitterStats(spool_bytes=spool.size_bytes)
        self._queue: deque[Item] = deque()
        self._overflowed = False
        self._queued = asyncio.Event()
        self._spool_changed = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stop_deadline: float | None = None
        self._stopped = False
        self._last_drop_log = -_DROP_LOG_INTERVAL_S

    @property
    def broker_connected(self) -> bool:
        """A producer is up and its last send succeeded (for /readyz)."""
        return self._producer is not None

    # -- the hot path ----------------------------------------------------------------------

    def emit(self, event: UsageEvent | EvaluationEvent) -> None:
        """Queue one event for delivery. O(1); never blocks, never raises.

        Past ``max_queue`` the broker is not keeping up: everything queued, this event
        included, takes the spool path (in emit order) until the queue has drained.
        """
        try:
            item = ((event.tenant or "").encode(), encode(event))
            if self._stopped:
                self._spool_after_stop(item)
                return
            if len(self._queue) >= self._max_queue:
                self._overflowed = True
            self._queue.append(item)
            self.stats.queue_depth = len(self._queue)
            self._queued.set()
        except Exception:
            log.exception("usage event %s could not be queued", getattr(event, "event_id", "?"))
            self.stats.dropped += 1

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (bounded) and start the background tasks.

        Never fails for an unreachable broker: events then go to the spool and the replay
        task keeps reconnecting with backoff.
        """
        self._producer = await self._connect()
        if self._producer is None:
            log.warning(
                "broker at %s unreachable at start: usage events go to the spool until it is",
                self._bootstrap_servers,
            )
        self._drainer = asyncio.create_task(self._drain(), name="usage-emitter-drain")
        self._replayer = asyncio.create_task(self._replay(), name="usage-emitter-replay")

    async def stop(self) -> None:
        """Flush the queue to the broker, or to the spool, within ``stop_timeout_s``.

        The spool is not replayed here; whatever it holds waits for the next start.
        """
        if self._stopped:
            return
        self._stop_deadline = time.monotonic() + self._stop_timeout_s
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        self._queued.set()
        if self._drainer is not None:
            await self._drainer
        self._stopped = True
        if self._queue:  # not started, or the drainer died
            await self._to_spool(self._take(len(self._queue)))
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._close(producer)
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.to_thread(self._spool.close)

    # -- draining the queue ----------------------------------------------------------------

    async def _drain(self) -> None:
        """Send the queue, batch by batch, to the broker or to the spool."""
        while True:
            if not self._queue:
                if self._stop_deadline is not None:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            producer = self._producer if self._may_send_directly() else None
            batch = self._take(_SPOOL_BATCH_MAX if producer is None else self._batch_max)
            try:
                if producer is None:
                    await self._to_spool(batch)
                else:
                    await self._send_direct(producer, batch)
            except Exception:  # a bug: keep the batch (a duplicate beats a loss) and go on
                log.exception("usage emitter: unexpected error while draining")
                self._queue.extendleft(reversed(batch))
                self.stats.queue_depth = len(self._queue)
                await asyncio.sleep(0.1)

    def _may_send_directly(self) -> bool:
        """Only with a producer, and only when nothing older waits in the spool."""
        past_deadline = self._stop_deadline is not None and time.monotonic() >= self._stop_deadline
        return (
            self._producer is not None
            and not self._overflowed
            and self._spool.pending_records == 0
            and not past_deadline
        )

    def _take(self, count: int) -> list[Item]:
        items = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        if not self._queue:
            self._overflowed = False
        self.stats.queue_depth = len(self._queue)
        return items

    async def _send_direct(self, producer: AIOKafkaProducer, items: list[Item]) -> None:
        timeout_s = self._send_timeout_s
        if self._stop_deadline is not None:
            timeout_s = max(0.1, min(timeout_s, self._stop_deadline - time.monotonic()))
        sent = await self._send(producer, items, timeout_s)
        self.stats.emitted += sent.delivered
        if sent.failed:
            # Close the failed producer before spooling: once closed it can no longer
            # deliver those events behind our back when the broker returns.
            await self._lose(producer, sent.reason)
            await self._to_spool(sent.failed)

    async def _to_spool(self, items: list[Item]) -> None:
        if not items:
            return
        records = [_KEY_LENGTH.pack(len(key)) + key + value for key, value in items]
        try:
            dropped = await asyncio.to_thread(self._spool.append, records)
        except Exception:
            log.exception("usage emitter: the spool failed")
            dropped = len(records)
        self.stats.spooled += len(records) - dropped
        self.stats.spool_bytes = self._spool.size_bytes
        if dropped:
            self._count_dropped(dropped)
        self._spool_changed.set()

    def _spool_after_stop(self, item: Item) -> None:
        # Rare (an event finishing after shutdown): better one blocking fsync than a loss.
        key, value = item
        dropped = self._spool.append([_KEY_LENGTH.pack(len(key)) + key + value])
        self.stats.spooled += 1 - dropped
        self.stats.spool_bytes = self._spool.size_bytes
        if dropped:
            self._count_dropped(dropped)

    def _count_dropped(self, count: int) -> None:
        self.stats.dropped += count
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.error(
                "usage spool %s full or unwritable (%d of %d bytes): %d usage events dropped",
                self._spool.directory,
                self._spool.size_bytes,
                self._spool.max_bytes,
                self.stats.dropped,
            )

    # -- the broker ------------------------------------------------------------------------

    async def _send(self, producer: AIOKafkaProducer, items: list[Item], timeout_s: float) -> _Sent:
        """Send ``items`` and wait for the broker's acknowledgements, at most ``timeout_s``."""
        futures: list[asyncio.Future[object] | None] = []
        reason: BaseException | None = None
        try:
            async with asyncio.timeout(timeout_s):
                for key, value in items:
                    try:
                        futures.append(await producer.send(self._topic, value, key=key))
                    except MessageSizeTooLargeError:
                        futures.append(None)
                waiting = [future for future in futures if future is not None]
                if waiting:
                    await asyncio.wait(waiting)
        except Exception as error:  # a timeout, or the producer refusing more
            reason = error
        delivered = rejected = 0
        failed: list[Item] = []
        for index, item in enumerate(items):
            if index >= len(futures):
                failed.append(item)
                continue
            future = futures[index]
            if future is None:
                rejected += 1
            elif not future.done():
                future.add_done_callback(_retrieve_exception)  # fails when discarded
                failed.append(item)
            elif future.cancelled() or future.exception() is not None:
                reason = reason or (None if future.cancelled() else future.exception())
                failed.append(item)
            else:
                delivered += 1
        if rejected:
            # Larger than the producer may send: retrying can never succeed.
            log.error("usage emitter: %d usage events too large for the broker, dropped", rejected)
            self.stats.dropped += rejected
        return _Sent(delivered, failed, reason)

    async def _connect(self) -> AIOKafkaProducer | None:
        """A started producer that knows ``topic``'s partitions, or None."""
        producer = AIOKafkaProducer(
            **{
                **producer_options(self._kafka, self._bootstrap_servers),
                # Nobody waits on a usage event: fuller batches cost less CPU per event.
                "linger_ms": _LINGER_MS,
            },
            request_timeout_ms=int(self._request_timeout_s * 1000),
            retry_backoff_ms=100,
        )
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await producer.start()
                await producer.partitions_for(self._topic)
        except BaseException as error:
            await self._close(producer)
            if not isinstance(error, Exception):
                raise
            log.debug("broker at %s unreachable: %r", self._bootstrap_servers, error)
            return None
        return producer

    async def _lose(self, producer: AIOKafkaProducer, reason: BaseException | None) -> None:
        if self._producer is producer:
            self._producer = None
            log.warning(
                "lost the broker at %s (%r): usage events go to the spool until it is back",
                self._bootstrap_servers,
                reason,
            )
        self._spool_changed.set()
        # Shielded: even if stop() cancels the replay task now, the producer gets closed.
        closing = asyncio.create_task(self._close(producer))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        await asyncio.shield(closing)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        """Close a producer now, failing whatever it still holds.

        ``stop()`` alone flushes first, which against a dead broker takes until the batches
        expire, and forever for an idempotent producer.
        """
        _fail_everything_held(producer)
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await producer.stop()
        except Exception as error:
            log.debug("usage emitter: producer did not close cleanly: %r", error)

    # -- replaying the spool ---------------------------------------------------------------

    async def _replay(self) -> None:
        """Reconnect, then send spooled batches, oldest first, acking each.

        Backs off, doubling up to ``reconnect_max_s``, while connecting or sending fails;
        a batch the broker acknowledged resets the backoff.
        """
        backoff_s = self._reconnect_min_s
        while True:
            if self._producer is None:
                self._producer = await self._connect()
                if self._producer is None:
                    await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
                    backoff_s = min(2 * backoff_s, self._reconnect_max_s)
                    continue
                log.info(
                    "broker at %s reachable: replaying %d spooled usage events",
                    self._bootstrap_servers,
                    self._spool.pending_records,
                )
            if self._spool.pending_records == 0:
                self._spool_changed.clear()
                await self._spool_changed.wait()
                continue
            try:
                replayed = await self._replay_batch(self._producer)
            except Exception:  # the spool's disk, or a bug: unacked records stay spooled
                log.exception("usage emitter: unexpected error while replaying the spool")
                replayed = False
            if replayed:
                backoff_s = self._reconnect_min_s
            else:
                await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
                backoff_s = min(2 * backoff_s, self._reconnect_max_s)

    async def _replay_batch(self, producer: AIOKafkaProducer) -> bool:
        """Send the oldest spooled batch; True once the broker acknowledged all of it."""
        records, cursor = await asyncio.to_thread(self._spool.read_batch, self._batch_max)
        if not records:  # counted but unreadable (damaged on disk): wait for new records
            self._spool_changed.clear()
            await self._spool_changed.wait()
            return True
        items: list[Item] = []
        for record in records:
            (length,) = _KEY_LENGTH.unpack_from(record)
            start = _KEY_LENGTH.size
            items.append((record[start : start + length], record[start + length :]))
        sent = await self._send(producer, items, self._send_timeout_s)
        if sent.failed:
            await self._lose(producer, sent.reason)
            return False
        await asyncio.to_thread(self._spool.ack, cursor)
        # Counted once acknowledged by both the broker and the spool, so that the stats
        # never show an event as emitted while it also still waits in the spool.
        self.stats.emitted += sent.delivered
        self.stats.replayed += sent.delivered
        self.stats.spool_bytes = self._spool.size_bytes
        return True


def _fail_everything_held(producer: AIOKafkaProducer) -> None:
    """Fail the producer's pending batches, as aiokafka itself does when its sender dies.

    aiokafka has no public way to abandon a producer, hence the private attributes; if
    they change, ``stop()`` still runs, bounded by a timeout.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None:
        return
    accumulator.fail_all(KafkaConnectionError("producer discarded by the usage emitter"))
    # fail_all also fails the drain waiter of each batch queued for a retry, which nobody
    # awaits: read it here, or asyncio logs "Future exception was never retrieved".
    for batches in getattr(accumulator, "_batches", {}).values():
        for batch in batches:
            waiter = getattr(batch, "_drain_waiter", None)
            if waiter is not None and waiter.done() and not waiter.cancelled():
                waiter.exception()


def _retrieve_exception(future: asyncio.Future[object]) -> None:
    """Mark a late failure seen: the event it belonged to was spooled already."""
    if not future.cancelled():
        future.exception()
