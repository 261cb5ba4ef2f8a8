"""The gateway's write-ahead log of usage events: durable, bounded, append-only, on local disk.

Every usage event is appended here before its call's answer completes; the
emitter ships the log to the broker from here, and replays it after a restart. The log
holds opaque records (bytes) and a flag per record saying whether it belongs to a refused
call; it knows nothing of Kafka.

On disk, a directory (mode 700) of files (mode 600):

- ``<number>.seg`` segment files, oldest first, created full of zeros (so that an append
  changes no metadata and a synchronous write is cheap), of records framed as ``length (4 bytes;
  the top bit marks a refused call's record; 0 ends the records) · CRC32 of the payload
  (4 bytes) · payload`` (big endian);
- ``acked``, the position (segment, byte offset) up to which the broker acknowledged the
  records (the *shipped* position), with a small opaque ``mark`` the emitter keeps beside it
  (who the broker was), replaced atomically (temporary file, rename).

What is guaranteed:

- ``append`` returns only after its records are written to the segment file: a record it
  accepted survives a crash of the process (SIGKILL, OOM). With ``synchronous`` (the
  default here) they are on disk too (``O_DSYNC``) and survive a crash of the machine;
  without it they are once ``sync()`` returns, which the emitter calls every
  ``spool_fsync_s``. Records may not be empty.
- A write torn by a crash is detected at the tail on reopen (short record or bad CRC) and
  cut off; every record before it is kept.
- After a restart nothing unacknowledged is missing. The shipped position is not fsynced
  (it would cost two fsyncs per batch shipped): after a crash of the *machine* some
  acknowledged records may be shipped again, which consumers drop by ``event_id``.
- Shipped records are kept for ``retain_s`` after their segment's last write, so that they
  can be shipped again to a broker that lost them (``rewind``); then the segment is deleted.
- Bounds: the records not yet shipped never exceed ``max_bytes``, and those of refused calls
  among them never exceed ``refused_share`` of it, so refused calls can never crowd out paid
  ones. Records kept after shipping count against ``max_bytes`` too, and give way first.
  ``append`` says which records it refused. Above ``warn_ratio`` of the bound it logs one
  WARNING, and again only after usage fell below and crossed it once more.

Every method may be called from any thread (the emitter calls them through
``asyncio.to_thread`` so the event loop never waits on the disk); a lock serialises them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.spool_segments import (
    DIRECTORY_MODE,
    FILE_MODE,
    HEADER,
    LENGTH_MASK,
    REFUSED_BIT,
    create_segment,
    fsync_directory,
    open_segment,
    scan,
    zero,
    zeros_after,
)

log = logging.getLogger(__name__)

_SUFFIX = ".seg"
_RETIRE_CHECK_S = 1.0
"""How often an append (off the event loop) looks for shipped segments to retire."""
_ACKED = "acked"
_ACKED_SAVE_EVERY_S = 0.25
_READ_MAX_BYTES = 1 << 20


@dataclass(frozen=True, order=True)
class SpoolPosition:
    """A place in the spool: a segment and a byte offset inside it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class SpoolCursor:
    """What one ``read_batch`` returned; hand it to ``ack`` once the records are delivered."""

    start: SpoolPosition
    end: SpoolPosition
    records: int
    size_bytes: int
    """Framed bytes the batch covers (headers included)."""
    refused_bytes: int = 0
    """Of which, records of refused calls."""


@dataclass
class _Segment:
    number: int
    path: Path
    end: int
    """Bytes of valid records; anything after it is ignored."""
    records: int
    refused_bytes: int
    written_at: float
    """Wall-clock time of the last append (the file's mtime after a restart)."""
    sealed: bool = False
    """Damaged in the middle: never appended to again, since appends go to the file's end."""


class Spool:
    """A directory of segment files; reopening the same directory resumes exactly."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int | None = None,
        warn_ratio: float = 0.8,
        retain_s: float = 0.0,
        refused_share: float = 0.1,
        synchronous: bool = True,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(4 << 20, max(max_bytes // 8, 4096))
        self.retain_s = retain_s
        self.synchronous = synchronous
        """Whether each append is on disk when it returns (else at the next ``sync``)."""
        self._unsynced = False
        self._retire_due_at = 0.0
        """When ``append_now`` next leaves an append to ``append``, which retires segments."""
        self._refused_max = int(max_bytes * refused_share)
        self._warn_bytes = int(max_bytes * warn_ratio)
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._tail: int | None = None
        """The descriptor of the segment appended to."""
        self._acked = SpoolPosition(0, 0)
        self._mark: dict[str, Any] = {}
        self._acked_saved_at = 0.0
        self._acked_unsaved = False
        self._reader: tuple[int, int] | None = None
        """The segment read last, and its descriptor."""
        self._size_bytes = 0
        self._refused_bytes = 0
        self._pending = 0
        self._warned = False
        self._open()

    @property
    def size_bytes(self) -> int:
        """Framed bytes of records not yet shipped; what ``max_bytes`` bounds."""
        return self._size_bytes

    @property
    def pending_records(self) -> int:
        """Records appended and not yet shipped."""
        return self._pending

    @property
    def disk_bytes(self) -> int:
        """Framed bytes on disk: records not yet shipped, and those kept after shipping."""
        return sum(segment.end for segment in self._segments.values())

    @property
    def mark(self) -> dict[str, Any]:
        """What the shipper stored with its last acknowledgement (empty at first)."""
        return self._mark

    def append(self, records: Sequence[bytes], refused: Sequence[bool] | None = None) -> list[int]:
        """Write ``records`` after every record already here and fsync them.

        ``refused[i]`` marks the record of a refused call. Returns the indices of the
        records not written: refused calls' records past their share, every record from
        the first that does not fit on (to keep order), or everything not written when the
        disk failed (logged here).
        """
        flags = refused or [False] * len(records)
        with self._lock:
            self._retire_expired()
            self._retire_due_at = time.time() + _RETIRE_CHECK_S
            kept: list[int] = []
            dropped: list[int] = []
            size = self._size_bytes
            refused_size = self._refused_bytes
            full = False
            for index, record in enumerate(records):
                framed = HEADER.size + len(record)
                if full or (flags[index] and refused_size + framed > self._refused_max):
                    dropped.append(index)
                elif size + framed > self.max_bytes:
                    full = True
                    dropped.append(index)
                else:
                    size += framed
                    refused_size += framed if flags[index] else 0
                    kept.append(index)
            self._make_room(size - self._size_bytes)
            written = self._write([records[i] for i in kept], [flags[i] for i in kept])
            dropped = sorted(dropped + kept[written:])
            self._check_usage()
            return dropped

    def append_now(self, records: Sequence[bytes], refused: Sequence[bool]) -> list[int] | None:
        """``append``, if it is only a write into the page cache that nothing holds up: the
        appends are not synchronous, no other thread holds the log, the open segment has
        room, and nothing is due to be retired, dropped or warned about. None otherwise:
        then ``append`` (off the event loop) does it.

        This lets the emitter write on the event loop without a thread hop (which costs more
        than the write): it never waits on the disk or on another thread.
        """
        if self.synchronous or not self._lock.acquire(blocking=False):
            return None
        try:
            last = max(self._segments, default=None)
            if self._tail is None or last is None or time.time() >= self._retire_due_at:
                return None
            framed = sum(HEADER.size + len(record) for record in records)
            refused_framed = sum(
                HEADER.size + len(record)
                for record, flag in zip(records, refused, strict=True)
                if flag
            )
            tail = self._segments[last]
            if (
                tail.sealed
                or tail.end + framed > self.segment_bytes
                or self._size_bytes + framed >= self._warn_bytes
                or self._refused_bytes + refused_framed > self._refused_max
                or self.disk_bytes + framed > self.max_bytes
            ):
                return None
            written = self._write(records, refused)
            return list(range(written, len(records)))
        finally:
            self._lock.release()

    def read_batch(self, max_records: int) -> tuple[list[bytes], SpoolCursor]:
        """The oldest records not yet shipped, at most ``max_records``, in append order.

        Reading does not consume: until ``ack`` the same records are returned again.
        """
        with self._lock:
            position = self._acked
            records: list[bytes] = []
            size = refused_size = 0
            while len(records) < max_records:
                segment = self._segments.get(position.segment)
                if segment is None:
                    break
                if position.offset >= segment.end:
                    following = self._next_number(position.segment)
                    if following is None:
                        break
                    position = SpoolPosition(following, 0)
                    continue
                got, position, got_refused = self._read(
                    segment, position.offset, max_records - len(records)
                )
                records += got
                size += sum(HEADER.size + len(record) for record in got)
                refused_size += got_refused
            cursor = SpoolCursor(self._acked, position, len(records), size, refused_size)
            return records, cursor

    def ack(self, cursor: SpoolCursor, mark: dict[str, Any] | None = None) -> None:
        """Mark a batch from ``read_batch`` shipped, keep ``mark`` beside it, free what it can.

        Raises ``ValueError`` for a cursor that does not start where the last ack ended:
        acknowledging out of order would skip records.
        """
        with self._lock:
            if cursor.start != self._acked:
                raise ValueError(f"stale spool cursor: starts at {cursor.start}, not {self._acked}")
            if mark is not None:
                self._mark = mark
            if cursor.records == 0 and mark is None:
                return
            position = self._skip_finished(cursor.end)
            self._acked = position
            self._save_acked()
            self._pending -= cursor.records
            self._size_bytes -= cursor.size_bytes
            self._refused_bytes -= cursor.refused_bytes
            self._retire_expired()
            self._check_usage()

    def rewind(self, mark: dict[str, Any] | None = None) -> int:
        """Make every record still kept after shipping unshipped again; return how many.

        For a broker that lost what it had acknowledged: the emitter ships them again.
        """
        with self._lock:
            before = self._pending
            first = min(self._segments, default=None)
            if first is not None:
                self._acked = SpoolPosition(first, 0)
            if mark is not None:
                self._mark = mark
            self._save_acked(now=True)
            self._recount()
            self._check_usage()
            return self._pending - before

    def ack_and_read(
        self, cursor: SpoolCursor, mark: dict[str, Any] | None, max_records: int
    ) -> tuple[list[bytes], SpoolCursor]:
        """``ack`` then ``read_batch``: one call (one thread hop) per batch shipped."""
        self.ack(cursor, mark)
        return self.read_batch(max_records)

    def sync(self) -> None:
        """Put what was appended since the last call on disk (a no-op when synchronous)."""
        with self._lock:
            if self._unsynced and self._tail is not None:
                os.fdatasync(self._tail)
            self._unsynced = False

    def close(self) -> None:
        """Save the shipped position, close the open files. The spool stays usable."""
        with self._lock:
            if self._acked_unsaved:
                self._save_acked(now=True)
            self._close_tail()
            self._close_reader()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # a directory of an older version, or not ours
            os.chmod(self.directory, DIRECTORY_MODE)
        (self.directory / f"{_ACKED}.tmp").unlink(missing_ok=True)
        self._acked, self._mark = self._read_acked()
        numbers = sorted(
            int(path.stem) for path in self.directory.glob(f"*{_SUFFIX}") if path.stem.isdigit()
        )
        for number in numbers:
            path = self._path(number)
            tally = scan(path)
            stat = path.stat()
            clean = zeros_after(path, tally.end)
            if not clean:
                if number == numbers[-1]:
                    log.warning(
                        "spool %s: ignoring a torn record at the end of %s (after byte %d)",
                        self.directory,
                        path.name,
                        tally.end,
                    )
                    zero(path, tally.end, stat.st_size)
                else:
                    log.error(
                        "spool %s: %s is corrupt after byte %d; %d bytes of it are unreadable",
                        self.directory,
                        path.name,
                        tally.end,
                        stat.st_size - tally.end,
                    )
            sealed = not clean and number != numbers[-1]
            self._segments[number] = _Segment(
                number, path, tally.end, tally.records, tally.refused_bytes, stat.st_mtime, sealed
            )
        head = self._segments.get(self._acked.segment)
        later = [number for number in self._segments if number > self._acked.segment]
        if head is not None:
            self._acked = SpoolPosition(head.number, min(self._acked.offset, head.end))
        elif later:  # the shipped position's segment is gone: everything after it is not
            self._acked = SpoolPosition(min(later), 0)
        elif self._segments:  # every segment left was shipped: appends follow the last
            last = self._segments[max(self._segments)]
            self._acked = SpoolPosition(last.number, last.end)
        self._recount()
        self._retire_expired()
        self._check_usage()

    def _recount(self) -> None:
        """Pending records and bytes: everything from the shipped position on."""
        self._pending = self._size_bytes = self._refused_bytes = 0
        for segment in self._segments.values():
            if segment.number < self._acked.segment:
                continue
            if segment.number == self._acked.segment and self._acked.offset > 0:
                tally = scan(segment.path, self._acked.offset, segment.end)
                self._pending += tally.records
                self._size_bytes += tally.end - self._acked.offset
                self._refused_bytes += tally.refused_bytes
            else:
                self._pending += segment.records
                self._size_bytes += segment.end
                self._refused_bytes += segment.refused_bytes

    def _read_acked(self) -> tuple[SpoolPosition, dict[str, Any]]:
        path = self.directory / _ACKED
        try:
            saved = json.loads(path.read_text())
            mark = saved.get("mark") or {}
            return SpoolPosition(int(saved["segment"]), int(saved["offset"])), dict(mark)
        except FileNotFoundError:
            return SpoolPosition(0, 0), {}
        except (ValueError, KeyError, TypeError, AttributeError):
            # Replaced atomically, so this means a machine crash or outside damage:
            # shipping from the oldest segment delivers some events twice, which consumers
            # drop; skipping would lose some.
            log.error("spool %s: unreadable %s, shipping everything again", self.directory, _ACKED)
            return SpoolPosition(0, 0), {}

    # -- writing -------------------------------------------------------------------------

    def _write(self, records: Sequence[bytes], refused: Sequence[bool]) -> int:
        """Append ``records`` across segments; return how many were fsynced."""
        written = 0
        while written < len(records):
            tail = self._writable_tail()
            if tail is None:
                break
            segment, descriptor = tail
            chunk: list[bytes] = []
            chunk_bytes = chunk_refused = 0
            for index in range(written, len(records)):
                record = records[index]
                framed = HEADER.size + len(record)
                if chunk and segment.end + chunk_bytes + framed > self.segment_bytes:
                    break
                length = len(record) | (REFUSED_BIT if refused[index] else 0)
                chunk += [HEADER.pack(length, zlib.crc32(record)), record]
                chunk_bytes += framed
                chunk_refused += framed if refused[index] else 0
            try:
                # Into the zeros the segment was created with: its size and blocks do not
                # change, so there is no metadata to journal (several times cheaper than
                # fsync after an append), and O_DSYNC makes it one system call.
                os.pwrite(descriptor, b"".join(chunk), segment.end)
                self._unsynced = not self.synchronous
            except OSError as error:
                log.error("spool %s: write failed (%s)", self.directory, error)
                self._undo_write(segment, chunk_bytes)
                break
            count = len(chunk) // 2
            segment.end += chunk_bytes
            segment.records += count
            segment.refused_bytes += chunk_refused
            segment.written_at = time.time()
            self._pending += count
            self._size_bytes += chunk_bytes
            self._refused_bytes += chunk_refused
            written += count
        return written

    def _writable_tail(self) -> tuple[_Segment, int] | None:
        """The segment to append to, rolling to a new one when the last is full."""
        last = max(self._segments, default=None)
        try:
            tail = None if last is None else self._segments[last]
            if tail is not None and not tail.sealed and tail.end < self.segment_bytes:
                if self._tail is None:
                    self._tail = open_segment(tail.path, self.synchronous)
                return tail, self._tail
            self._close_tail()
            number = self._acked.segment if last is None else last + 1
            path = self._path(number)
            self._tail = create_segment(path, self.segment_bytes, self.synchronous)
            fsync_directory(self.directory)
        except OSError as error:
            log.error("spool %s: cannot open a segment (%s)", self.directory, error)
            self._close_tail()
            return None
        self._segments[number] = _Segment(number, path, 0, 0, 0, time.time())
        return self._segments[number], self._tail

    def _undo_write(self, segment: _Segment, size: int) -> None:
        self._close_tail()
        try:
            zero(segment.path, segment.end, segment.end + size)
        except OSError as error:
            # Reopening scans the file and cuts off whatever this left behind.
            log.error("spool %s: could not undo a failed write (%s)", self.directory, error)

    def _close_tail(self) -> None:
        if self._tail is not None:
            if self._unsynced:  # a segment left behind is on disk whole
                with contextlib.suppress(OSError):
                    os.fdatasync(self._tail)
                self._unsynced = False
            os.close(self._tail)
            self._tail = None

    # -- reading and acknowledging ---------------------------------------------------------

    def _read(
        self, segment: _Segment, offset: int, max_records: int
    ) -> tuple[list[bytes], SpoolPosition, int]:
        if self._reader is None or self._reader[0] != segment.number:
            self._close_reader()
            self._reader = (segment.number, os.open(segment.path, os.O_RDONLY))
        # One read of what is there (never a buffered one: appends come through another
        # descriptor, over zeros a buffer may still hold).
        data = os.pread(self._reader[1], min(segment.end - offset, _READ_MAX_BYTES), offset)
        records: list[bytes] = []
        refused_bytes = at = 0
        while len(records) < max_records and at + HEADER.size <= len(data):
            length, crc = HEADER.unpack_from(data, at)
            size = length & LENGTH_MASK
            start = at + HEADER.size
            if start + size > len(data) and records:
                break  # past this read: the next batch starts there
            if start + size > len(data):  # one record larger than a read
                data = os.pread(self._reader[1], min(start + size, segment.end - offset), offset)
            payload = data[start : start + size]
            if length == 0 or len(payload) < size or zlib.crc32(payload) != crc:
                log.error(
                    "spool %s: %s changed on disk after byte %d; skipping the rest of it",
                    self.directory,
                    segment.path.name,
                    offset + at,
                )
                segment.end, segment.sealed = offset + at, True
                segment.records = scan(segment.path, 0, offset + at).records
                self._recount()
                break
            records.append(payload)
            at = start + size
            refused_bytes += at - start + HEADER.size if length & REFUSED_BIT else 0
        return records, SpoolPosition(segment.number, offset + at), refused_bytes

    def _skip_finished(self, position: SpoolPosition) -> SpoolPosition:
        """Move a position that ends a segment to the start of the next one, if any.

        The end of the last segment stays where it is: appends go on after it.
        """
        while True:
            segment = self._segments.get(position.segment)
            following = self._next_number(position.segment)
            if segment is None or position.offset < segment.end or following is None:
                return position
            position = SpoolPosition(following, 0)

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader[1])
            self._reader = None

    def _save_acked(self, now: bool = False) -> None:
        """Write the shipped position, at most every ``_ACKED_SAVE_EVERY_S`` unless ``now``.

        A position saved late only makes a restart ship some events again.
        """
        clock = time.monotonic()
        if not now and clock - self._acked_saved_at < _ACKED_SAVE_EVERY_S:
            self._acked_unsaved = True
            return
        self._write_acked(self._acked)
        self._acked_saved_at, self._acked_unsaved = clock, False

    def _write_acked(self, position: SpoolPosition) -> None:
        temporary = self.directory / f"{_ACKED}.tmp"
        saved = {"segment": position.segment, "offset": position.offset, "mark": self._mark}
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(descriptor, "w") as file:
            json.dump(saved, file)
        os.replace(temporary, self.directory / _ACKED)

    def _retire_expired(self) -> None:
        """Delete shipped segments kept longer than ``retain_s``."""
        now = time.time()
        for number in sorted(self._segments):
            if number >= self._acked.segment:
                return
            if self._segments[number].written_at + self.retain_s > now:
                return
            self._retire(number)

    def _make_room(self, incoming_bytes: int) -> None:
        """Delete the oldest shipped segments while the disk would hold over ``max_bytes``."""
        total = self.disk_bytes + incoming_bytes
        for number in sorted(self._segments):
            if total <= self.max_bytes or number >= self._acked.segment:
                return
            total -= self._segments[number].end
            self._retire(number)

    def _retire(self, number: int) -> None:
        if self._reader is not None and self._reader[0] == number:
            self._close_reader()
        segment = self._segments.pop(number)
        if number >= max(self._segments, default=-1):
            self._close_tail()
        segment.path.unlink(missing_ok=True)

    def _next_number(self, number: int) -> int | None:
        return min((n for n in self._segments if n > number), default=None)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:020d}{_SUFFIX}"

    def _check_usage(self) -> None:
        high = self._size_bytes >= self._warn_bytes
        if high and not self._warned:
            log.warning(
                "spool %s is %d%% full (%d of %d bytes): usage events will be dropped when it is "
                "full; is the broker reachable?",
                self.directory,
                100 * self._size_bytes // self.max_bytes,
                self._size_bytes,
                self.max_bytes,
            )
        self._warned = high
