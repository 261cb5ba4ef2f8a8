"""Usage events from the gateway to the broker, through a write-ahead log on local disk.

The gateway calls ``emit(event)`` once per AI call and waits on what it returns before its
answer completes. ``emit`` itself only appends to the current *group*; a writer task
appends each group to the ``Spool`` (the log) with one fsync in a worker thread, then wakes
the group's waiters: concurrent calls share one fsync (group commit), and the event loop
never waits on the disk. A shipper task sends the log to Kafka in batches, oldest first,
and marks each batch shipped once the broker acknowledged all of it.

What is guaranteed:

- An event whose ``emit`` was awaited is on disk: a SIGKILL of the gateway loses none of
  them; the next start ships what the last one had not. ``emit`` never raises.
- At least once: a batch is shipped again when the broker did not acknowledge all of it,
  after a restart that came before its acknowledgement was recorded, and after a broker
  loss (below). Consumers drop the copies by ``event_id``.
- An event is dropped only when the log is full, or the share of it that refused calls may
  take is, or its disk fails; every dropped event's ``event_id`` is logged at ERROR.
- A broker that lost its history: shipped events stay in the log for ``spool_retain_s``.
  When the broker the shipper reaches is not the one it last shipped to (another cluster
  id: the embedded broker takes a new one at each start), or a partition's offsets went
  backwards, every event still kept is shipped again, in order.
- ``stop()`` ships what it can within ``stop_timeout_s``; what is left waits on disk.

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
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from gateway.spool import Spool, SpoolCursor
from tollgate.contract import REJECTED_STATUSES, EvaluationEvent, UsageEvent, encode
from tollgate.kafka import (
    client_options,
    idempotence_refused,
    producer_options,
    refuses_idempotence,
)
from tollgate.settings import KafkaSettings

log = logging.getLogger(__name__)

_KEY_LENGTH = struct.Struct(">I")
_DROP_LOG_INTERVAL_S = 1.0
_DROP_LOG_MAX_IDS = 10_000
_LINGER_MS = 25

Item = tuple[bytes, bytes]
"""(key, value) as they go to Kafka."""


@dataclass
class EmitterStats:
    """Live counters for metrics: the emitter updates this one object in place."""

    emitted: int = 0
    """Events the broker acknowledged (a resent event counts each time)."""
    spooled: int = 0
    """Events written to the log."""
    writes: int = 0
    """Writes to the log (fsyncs): ``spooled / writes`` is the mean group size."""
    resent: int = 0
    """Shipped events made due again because the broker lost them."""
    dropped: int = 0
    """Events lost: the log was full or could not be written."""
    queue_depth: int = 0
    """Events waiting in memory for their write."""
    spool_bytes: int = 0
    """Bytes in the log not yet shipped."""


class _NotShipped(Exception):
    """The broker did not acknowledge a whole batch; it stays due."""


@dataclass
class _Sent:
    delivered: int
    failed: bool
    reason: BaseException | None
    offsets: dict[int, tuple[int, int]]
    """Per partition, the lowest and highest offset the broker gave this batch."""
    too_large: list[bytes]
    """Values the producer refuses to send, ever."""


class UsageEmitter:
    """Writes usage events to ``spool`` and ships them to ``topic``, keyed by tenant.

    Call ``emit`` from the event loop's thread. ``start`` and ``stop`` bracket its life;
    events emitted before ``start`` wait in memory, events emitted after ``stop`` are
    written to the log at once.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap_servers: str,
        topic: str,
        spool: Spool,
        *,
        batch_max: int = 500,
        request_timeout_s: float = 3.0,
        send_timeout_s: float | None = None,
        stop_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        sync_every_s: float = 0.1,
    ) -> None:
        self._kafka = kafka
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._spool = spool
        self._batch_max = batch_max
        self._request_timeout_s = request_timeout_s
        self._send_timeout_s = send_timeout_s or 2 * request_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._sync_every_s = sync_every_s

        self.stats = EmitterStats(spool_bytes=spool.size_bytes)
        self._group: list[tuple[bytes, bool, str]] = []
        self._group_written = asyncio.Event()
        self._queued = asyncio.Event()
        self._spool_changed = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._cluster: str | None = None
        self._offsets: dict[int, int] = {}
        self._writer: asyncio.Task[None] | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._shipper: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped = False
        self._dropped_ids: list[str] = []
        self._last_drop_log = -_DROP_LOG_INTERVAL_S
        mark = spool.mark
        self._cluster_shipped_to: str | None = mark.get("cluster")
        self._offsets = {int(p): int(o) for p, o in (mark.get("offsets") or {}).items()}

    @property
    def broker_connected(self) -> bool:
        """A producer is up and its last send succeeded (for /readyz)."""
        return self._producer is not None

    # -- the hot path ----------------------------------------------------------------------

    def emit(self, event: UsageEvent | EvaluationEvent) -> asyncio.Event:
        """Queue one event for the log. O(1); never blocks, never raises.

        Returns an event that is set once the record is on disk (or dropped, and logged):
        ``await emitter.emit(e).wait()`` before the answer completes.
        """
        try:
            key = (event.tenant or "").encode()
            record = _KEY_LENGTH.pack(len(key)) + key + encode(event)
            refused = isinstance(event, UsageEvent) and event.status in REJECTED_STATUSES
            if self._stopped:
                self._write_after_stop(record, refused, str(event.event_id))
                return _SET
            self._group.append((record, refused, str(event.event_id)))
            self.stats.queue_depth = len(self._group)
            self._queued.set()
            return self._group_written
        except Exception:
            log.exception("usage event %s could not be queued", getattr(event, "event_id", "?"))
            self.stats.dropped += 1
            return _SET

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (bounded) and start the writer and the shipper.

        Never fails for an unreachable broker: events wait in the log and the shipper
        keeps reconnecting with backoff.
        """
        self._writer = asyncio.create_task(self._write_groups(), name="usage-log-writer")
        if not self._spool.synchronous:
            self._syncer = asyncio.create_task(self._sync_periodically(), name="usage-log-sync")
        self._producer = await self._connect()
        if self._producer is None:
            log.warning(
                "broker at %s unreachable at start: usage events wait in the log %s until it is",
                self._bootstrap_servers,
                self._spool.directory,
            )
        self._shipper = asyncio.create_task(self._ship(), name="usage-log-shipper")

    async def stop(self) -> None:
        """Write every queued event, then ship what can be within ``stop_timeout_s``."""
        if self._stopped:
            return
        deadline = time.monotonic() + self._stop_timeout_s
        self._stopping = True
        self._queued.set()
        if self._writer is not None:
            await self._writer
        self._stopped = True
        if self._group:  # never started
            await self._write_group()
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        if self._shipper is not None:
            self._spool_changed.set()
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await asyncio.shield(self._shipper)
            except TimeoutError:
                log.warning(
                    "usage log: %d events not shipped at stop; the next start ships them",
                    self._spool.pending_records,
                )
                self._shipper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._shipper
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._close(producer)
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._log_dropped(force=True)
        await asyncio.to_thread(self._spool.close)

    # -- writing the log -------------------------------------------------------------------

    async def _write_groups(self) -> None:
        """Append each group to the log, one fsync per group, and wake its waiters."""
        while True:
            if not self._group:
                if self._stopping:
                    return
                self._queued.clear()
                await self._queued.wait()
                # One turn of the loop first: calls finishing in it join this fsync.
                await asyncio.sleep(0)
                continue
            await self._write_group()

    async def _write_group(self) -> None:
        group, written = self._group, self._group_written
        self._group, self._group_written = [], asyncio.Event()
        self.stats.queue_depth = 0
        records, flags = [r for r, _, _ in group], [f for _, f, _ in group]
        try:
            # A write into the page cache, when nothing holds it up, costs less than the
            # thread hop; anything that may wait on the disk goes to a thread.
            dropped = self._spool.append_now(records, flags)
            if dropped is None:
                dropped = await asyncio.to_thread(self._spool.append, records, flags)
        except Exception:  # a bug: say which events it cost
            log.exception("usage log: the write failed")
            dropped = list(range(len(group)))
        finally:
            written.set()
        self.stats.writes += 1
        self._account(group, dropped)
        self._spool_changed.set()

    async def _sync_periodically(self) -> None:
        """Put the log's new writes on disk every ``sync_every_s`` (when the spool's appends
        are not synchronous): a crash of the machine loses at most that much of them; a
        crash of the gateway's process loses none, written or not yet synced."""
        synced_writes = self.stats.writes
        while True:
            await asyncio.sleep(self._sync_every_s)
            if self.stats.writes == synced_writes:
                continue
            synced_writes = self.stats.writes
            try:
                await asyncio.to_thread(self._spool.sync)
            except OSError as error:
                log.error("usage log %s: fsync failed (%s)", self._spool.directory, error)

    def _write_after_stop(self, record: bytes, refused: bool, event_id: str) -> None:
        # Rare (a call finishing after shutdown): better one blocking fsync than a loss.
        dropped = self._spool.append([record], [refused])
        self._account([(record, refused, event_id)], dropped)

    def _account(self, group: list[tuple[bytes, bool, str]], dropped: list[int]) -> None:
        self.stats.spooled += len(group) - len(dropped)
        self.stats.spool_bytes = self._spool.size_bytes
        if dropped:
            self.stats.dropped += len(dropped)
            self._dropped_ids += [group[i][2] for i in dropped]
            self._log_dropped()

    def _log_dropped(self, force: bool = False) -> None:
        """One ERROR line per second at most, naming every event dropped since the last."""
        now = time.monotonic()
        if not self._dropped_ids:
            return
        recent = now - self._last_drop_log < _DROP_LOG_INTERVAL_S
        if not force and recent and len(self._dropped_ids) < _DROP_LOG_MAX_IDS:
            return
        self._last_drop_log = now
        ids, self._dropped_ids = self._dropped_ids, []
        log.error(
            "usage log %s full or unwritable (%d of %d bytes unshipped): %d usage events "
            "dropped (%d in all): %s",
            self._spool.directory,
            self._spool.size_bytes,
            self._spool.max_bytes,
            len(ids),
            self.stats.dropped,
            " ".join(ids),
            extra={"fields": {"dropped_event_ids": ids}},
        )

    # -- shipping the log ------------------------------------------------------------------

    async def _ship(self) -> None:
        """Reconnect, then send the log's batches, oldest first, marking each shipped.

        Backs off, doubling up to ``reconnect_max_s``, while connecting or sending fails;
        a batch the broker acknowledged resets the backoff. Returns when stopping and
        everything is shipped.
        """
        backoff_s = self._reconnect_min_s
        batch: tuple[list[bytes], SpoolCursor] | None = None
        while True:
            if self._stopped and self._spool.pending_records == 0:
                return
            if self._producer is None:
                batch = None
                self._producer = await self._connect()
                if self._producer is None:
                    await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
                    backoff_s = min(2 * backoff_s, self._reconnect_max_s)
                    continue
                log.info(
                    "broker at %s reachable: shipping %d usage events from the log",
                    self._bootstrap_servers,
                    self._spool.pending_records,
                )
            if self._spool.pending_records == 0:
                batch = None
                self._spool_changed.clear()
                await self._spool_changed.wait()
                continue
            try:
                if batch is None or not batch[0]:
                    batch = await asyncio.to_thread(self._spool.read_batch, self._batch_max)
                batch = await self._ship_batch(self._producer, *batch)
                shipped = True
            except _NotShipped:
                batch, shipped = None, False
            except Exception:  # the log's disk, or a bug: what is not shipped stays due
                log.exception("usage emitter: unexpected error while shipping the log")
                batch, shipped = None, False
            if shipped:
                backoff_s = self._reconnect_min_s
            else:
                await asyncio.sleep(backoff_s * random.uniform(0.8, 1.2))
                backoff_s = min(2 * backoff_s, self._reconnect_max_s)

    async def _ship_batch(
        self, producer: AIOKafkaProducer, records: list[bytes], cursor: SpoolCursor
    ) -> tuple[list[bytes], SpoolCursor] | None:
        """Send one batch; once the broker acknowledged all of it, mark it shipped and
        return the next batch (None: read it afresh). Raises ``_NotShipped`` otherwise."""
        if not records:  # counted but unreadable (damaged on disk): wait for new records
            self._spool_changed.clear()
            await self._spool_changed.wait()
            return None
        items: list[Item] = []
        for record in records:
            (length,) = _KEY_LENGTH.unpack_from(record)
            start = _KEY_LENGTH.size
            items.append((record[start : start + length], record[start + length :]))
        sent = await self._send(producer, items, self._send_timeout_s)
        if sent.failed:
            await self._lose(producer, sent.reason)
            raise _NotShipped
        if self._went_backwards(sent.offsets):
            await self._rewind(f"offsets of {self._topic} went backwards")
            return None
        for partition, (_, highest) in sent.offsets.items():
            self._offsets[partition] = highest
        self._cluster_shipped_to = self._cluster
        following = await asyncio.to_thread(
            self._spool.ack_and_read, cursor, self._mark(), self._batch_max
        )
        self.stats.emitted += sent.delivered
        self.stats.spool_bytes = self._spool.size_bytes
        if sent.too_large:
            # Larger than the producer may send: retrying can never succeed.
            ids = [_event_id(value) for value in sent.too_large]
            self.stats.dropped += len(ids)
            log.error("usage events too large for the broker, dropped: %s", " ".join(ids))
        return following

    def _went_backwards(self, offsets: dict[int, tuple[int, int]]) -> bool:
        return any(
            lowest <= self._offsets.get(partition, -1) for partition, (lowest, _) in offsets.items()
        )

    def _mark(self) -> dict[str, Any]:
        return {"cluster": self._cluster, "offsets": {str(p): o for p, o in self._offsets.items()}}

    async def _rewind(self, why: str) -> None:
        """The broker lost what it acknowledged: everything kept is due again."""
        self._offsets = {}
        self._cluster_shipped_to = self._cluster
        due_again = await asyncio.to_thread(self._spool.rewind, self._mark())
        self.stats.resent += due_again
        self.stats.spool_bytes = self._spool.size_bytes
        log.warning(
            "broker at %s lost its history (%s): shipping the %d usage events of the last "
            "%.0f s or more again (consumers drop copies by event_id)",
            self._bootstrap_servers,
            why,
            due_again,
            self._spool.retain_s,
        )

    # -- the broker ------------------------------------------------------------------------

    async def _send(self, producer: AIOKafkaProducer, items: list[Item], timeout_s: float) -> _Sent:
        """Send ``items`` and wait for the broker's acknowledgements, at most ``timeout_s``."""
        futures: list[asyncio.Future[Any] | None] = []
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
        delivered = 0
        failed = len(futures) < len(items)
        offsets: dict[int, tuple[int, int]] = {}
        too_large: list[bytes] = []
        for index, future in enumerate(futures):
            if future is None:
                too_large.append(items[index][1])
            elif not future.done():
                future.add_done_callback(_retrieve_exception)  # fails when discarded
                failed = True
            elif future.cancelled() or future.exception() is not None:
                reason = reason or (None if future.cancelled() else future.exception())
                failed = True
            else:
                delivered += 1
                metadata = future.result()
                low, high = offsets.get(metadata.partition, (metadata.offset, metadata.offset))
                offsets[metadata.partition] = (
                    min(low, metadata.offset),
                    max(high, metadata.offset),
                )
        return _Sent(delivered, failed, reason, offsets, too_large)

    async def _connect(self) -> AIOKafkaProducer | None:
        """A started producer that knows ``topic``'s partitions, or None.

        Learns the broker's cluster id first: another one than the log's mark says means
        a broker that does not hold what was shipped, so it is all shipped again.
        """
        try:
            cluster = await self._cluster_id()
        except Exception as error:
            log.debug("broker at %s unreachable: %r", self._bootstrap_servers, error)
            return None
        producer = AIOKafkaProducer(
            **{
                **producer_options(self._kafka, self._bootstrap_servers),
                # Nobody waits on the broker: fuller batches cost less CPU per event.
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
            if refuses_idempotence(self._kafka, error):
                log.error(
                    "%s. Usage events wait in the log %s",
                    idempotence_refused(self._bootstrap_servers, error),
                    self._spool.directory,
                )
            else:
                log.debug("broker at %s unreachable: %r", self._bootstrap_servers, error)
            return None
        self._cluster = cluster
        if self._cluster_shipped_to is not None and cluster != self._cluster_shipped_to:
            await self._rewind(f"cluster id {self._cluster_shipped_to} is now {cluster}")
        return producer

    async def _cluster_id(self) -> str | None:
        admin = AIOKafkaAdminClient(
            **client_options(self._kafka, self._bootstrap_servers),
            request_timeout_ms=int(self._request_timeout_s * 1000),
        )
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await admin.start()
                described = await admin.describe_cluster()
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        return described.get("cluster_id")

    async def _lose(self, producer: AIOKafkaProducer, reason: BaseException | None) -> None:
        if self._producer is producer:
            self._producer = None
            log.warning(
                "lost the broker at %s (%r): usage events wait in the log until it is back",
                self._bootstrap_servers,
                reason,
            )
        # Shielded: even if stop() cancels the shipper now, the producer gets closed.
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


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


_SET = _set_event()
"""What ``emit`` returns when there is nothing to wait for."""


def _event_id(value: bytes) -> str:
    try:
        return str(msgspec.json.decode(value).get("event_id", "?"))
    except Exception:
        return "?"


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
    """Mark a late failure seen: the event it belonged to is still due in the log."""
    if not future.cancelled():
        future.exception()
