"""A durable, bounded, append-only queue of usage events on local disk.

The gateway writes here whatever the broker cannot take right now and replays it, oldest
first, when the broker is back. The spool holds opaque records (bytes); it knows nothing
of Kafka.

On disk, a directory of:

- ``<number>.seg`` segment files, oldest first, of records framed as
  ``length (4 bytes) · CRC32 of the payload (4 bytes) · payload`` (big endian);
- ``acked``, the position (segment, byte offset) up to which records were delivered,
  replaced atomically: written to a temporary file, fsynced, renamed, directory fsynced.

What is guaranteed:

- ``append`` returns only after its records are fsynced: a record it accepted survives a
  crash of the process or the machine.
- A write torn by a crash is detected at the tail on reopen (short record or bad CRC) and
  cut off; every record before it is kept.
- ``ack`` is durable before it returns: after a restart nothing acknowledged is read again
  and nothing unacknowledged is missing. Fully acknowledged segments are deleted, so a
  drained spool holds no segment files.
- The spool never holds more than ``max_bytes`` of unacknowledged records: ``append``
  refuses what does not fit (and everything after it, to keep order) and says how many
  records it refused. Above ``warn_ratio`` of the bound it logs one WARNING, and again
  only after usage fell below and crossed it once more.

Every method may be called from any thread (the emitter calls them through
``asyncio.to_thread`` so the event loop never waits on the disk); a lock serialises them.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_SUFFIX = ".seg"
_ACKED = "acked"


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


@dataclass
class _Segment:
    number: int
    path: Path
    end: int
    """Bytes of valid records; anything after it is ignored."""
    records: int
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
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(16 << 20, max(max_bytes // 4, 4096))
        self._warn_bytes = int(max_bytes * warn_ratio)
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}
        self._tail: BinaryIO | None = None
        self._acked = SpoolPosition(0, 0)
        self._size_bytes = 0
        self._pending = 0
        self._warned = False
        self._open()

    @property
    def size_bytes(self) -> int:
        """Framed bytes of records not yet acknowledged; what ``max_bytes`` bounds."""
        return self._size_bytes

    @property
    def pending_records(self) -> int:
        """Records appended and not yet acknowledged."""
        return self._pending

    def append(self, records: Sequence[bytes]) -> int:
        """Write ``records`` after every record already here and fsync them.

        Returns how many were refused: those past the size bound, or everything not written
        when the disk failed (logged here). Refused records are the tail of ``records``.
        """
        with self._lock:
            accepted = 0
            size = self._size_bytes
            for record in records:
                size += _HEADER.size + len(record)
                if size > self.max_bytes:
                    break
                accepted += 1
            written = self._write(records[:accepted])
            self._check_usage()
            return len(records) - written

    def read_batch(self, max_records: int) -> tuple[list[bytes], SpoolCursor]:
        """The oldest unacknowledged records, at most ``max_records``, in append order.

        Reading does not consume: until ``ack`` the same records are returned again.
        """
        with self._lock:
            position = self._acked
            records: list[bytes] = []
            size = 0
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
                got, position = self._read(segment, position.offset, max_records - len(records))
                records += got
                size += sum(_HEADER.size + len(record) for record in got)
            return records, SpoolCursor(self._acked, position, len(records), size)

    def ack(self, cursor: SpoolCursor) -> None:
        """Mark a batch from ``read_batch`` delivered, durably, and free what it can.

        Raises ``ValueError`` for a cursor that does not start where the last ack ended:
        acknowledging out of order would skip records.
        """
        with self._lock:
            if cursor.start != self._acked:
                raise ValueError(f"stale spool cursor: starts at {cursor.start}, not {self._acked}")
            if cursor.records == 0:
                return
            position = self._skip_finished(cursor.end)
            self._write_acked(position)
            for number in [n for n in self._segments if n < position.segment]:
                self._retire(number)
            self._acked = position
            self._pending -= cursor.records
            self._size_bytes -= cursor.size_bytes
            self._check_usage()

    def close(self) -> None:
        """Close the open segment file. The spool stays usable; it reopens on demand."""
        with self._lock:
            self._close_tail()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{_ACKED}.tmp").unlink(missing_ok=True)
        self._acked = self._read_acked()
        numbers = sorted(
            int(path.stem) for path in self.directory.glob(f"*{_SUFFIX}") if path.stem.isdigit()
        )
        for number in numbers:
            path = self._path(number)
            if number < self._acked.segment:
                path.unlink()  # acknowledged before a crash, not deleted yet
                continue
            end, records = _scan(path)
            file_size = path.stat().st_size
            if end < file_size:
                if number == numbers[-1]:
                    log.warning(
                        "spool %s: ignoring a torn record at the end of %s (%d bytes)",
                        self.directory,
                        path.name,
                        file_size - end,
                    )
                    with open(path, "r+b") as file:
                        file.truncate(end)
                        os.fsync(file.fileno())
                else:
                    log.error(
                        "spool %s: %s is corrupt after byte %d; %d bytes of it are unreadable",
                        self.directory,
                        path.name,
                        end,
                        file_size - end,
                    )
            sealed = end < file_size and number != numbers[-1]
            self._segments[number] = _Segment(number, path, end, records, sealed)
        head = self._segments.get(self._acked.segment)
        if head is not None:
            offset = min(self._acked.offset, head.end)
            self._acked = SpoolPosition(head.number, offset)
            acked_records = _count_records(head.path, offset)
            self._pending = sum(s.records for s in self._segments.values()) - acked_records
            self._size_bytes = sum(s.end for s in self._segments.values()) - offset
        else:
            self._pending = sum(s.records for s in self._segments.values())
            self._size_bytes = sum(s.end for s in self._segments.values())
        self._check_usage()

    def _read_acked(self) -> SpoolPosition:
        path = self.directory / _ACKED
        try:
            saved = json.loads(path.read_text())
            return SpoolPosition(int(saved["segment"]), int(saved["offset"]))
        except FileNotFoundError:
            return SpoolPosition(0, 0)
        except (ValueError, KeyError, TypeError):
            # Replaced atomically, so this means outside damage: replaying from the oldest
            # segment delivers some events twice, which consumers dedupe; skipping loses some.
            log.error("spool %s: unreadable %s, replaying everything", self.directory, _ACKED)
            return SpoolPosition(0, 0)

    # -- writing -------------------------------------------------------------------------

    def _write(self, records: Sequence[bytes]) -> int:
        """Append ``records`` across segments; return how many were fsynced."""
        written = 0
        while written < len(records):
            tail = self._writable_tail()
            if tail is None:
                break
            segment, file = tail
            chunk: list[bytes] = []
            chunk_bytes = 0
            for record in records[written:]:
                framed = _HEADER.size + len(record)
                if chunk and segment.end + chunk_bytes + framed > self.segment_bytes:
                    break
                chunk += [_HEADER.pack(len(record), zlib.crc32(record)), record]
                chunk_bytes += framed
            try:
                file.write(b"".join(chunk))
                file.flush()
                os.fsync(file.fileno())
            except OSError as error:
                log.error("spool %s: write failed (%s)", self.directory, error)
                self._undo_write(segment)
                break
            count = len(chunk) // 2
            segment.end += chunk_bytes
            segment.records += count
            self._pending += count
            self._size_bytes += chunk_bytes
            written += count
        return written

    def _writable_tail(self) -> tuple[_Segment, BinaryIO] | None:
        """The segment to append to, rolling to a new one when the last is full."""
        last = max(self._segments, default=None)
        try:
            tail = None if last is None else self._segments[last]
            if tail is not None and not tail.sealed and tail.end < self.segment_bytes:
                if self._tail is None:
                    self._tail = open(tail.path, "ab")  # noqa: SIM115
                return tail, self._tail
            self._close_tail()
            number = self._acked.segment if last is None else last + 1
            path = self._path(number)
            self._tail = open(path, "ab")  # noqa: SIM115
            _fsync_directory(self.directory)
        except OSError as error:
            log.error("spool %s: cannot open a segment (%s)", self.directory, error)
            self._close_tail()
            return None
        self._segments[number] = _Segment(number, path, 0, 0)
        return self._segments[number], self._tail

    def _undo_write(self, segment: _Segment) -> None:
        self._close_tail()
        try:
            with open(segment.path, "r+b") as file:
                file.truncate(segment.end)
        except OSError as error:
            # Reopening scans the file and cuts off whatever this left behind.
            log.error("spool %s: could not undo a failed write (%s)", self.directory, error)

    def _close_tail(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    # -- reading and acknowledging ---------------------------------------------------------

    def _read(
        self, segment: _Segment, offset: int, max_records: int
    ) -> tuple[list[bytes], SpoolPosition]:
        records: list[bytes] = []
        with open(segment.path, "rb") as file:
            file.seek(offset)
            while len(records) < max_records and offset < segment.end:
                payload = _read_record(file)
                if payload is None:
                    log.error(
                        "spool %s: %s changed on disk after byte %d; skipping the rest of it",
                        self.directory,
                        segment.path.name,
                        offset,
                    )
                    kept = _count_records(segment.path, offset)
                    self._pending -= segment.records - kept
                    self._size_bytes -= segment.end - offset
                    segment.end, segment.records, segment.sealed = offset, kept, True
                    break
                records.append(payload)
                offset += _HEADER.size + len(payload)
        return records, SpoolPosition(segment.number, offset)

    def _skip_finished(self, position: SpoolPosition) -> SpoolPosition:
        """Move a position that ends a segment to the start of the next one.

        When it ends the last segment, everything is acknowledged: the position moves to
        the next segment number, and the last segment is retired too.
        """
        while True:
            segment = self._segments.get(position.segment)
            if segment is None or position.offset < segment.end:
                return position
            position = SpoolPosition(position.segment + 1, 0)
            following = self._next_number(segment.number)
            if following is not None:
                position = SpoolPosition(following, 0)

    def _write_acked(self, position: SpoolPosition) -> None:
        temporary = self.directory / f"{_ACKED}.tmp"
        with open(temporary, "w") as file:
            json.dump({"segment": position.segment, "offset": position.offset}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.directory / _ACKED)
        _fsync_directory(self.directory)

    def _retire(self, number: int) -> None:
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


def _scan(path: Path) -> tuple[int, int]:
    """Bytes and count of the valid records at the start of a segment file."""
    data = path.read_bytes()
    offset = records = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
            break
        offset = start + length
        records += 1
    return offset, records


def _read_record(file: BinaryIO) -> bytes | None:
    """The next record's payload, or None if it is short or fails its CRC."""
    header = file.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length, crc = _HEADER.unpack(header)
    payload = file.read(length)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _count_records(path: Path, end: int) -> int:
    """How many records a segment holds before byte ``end`` (a record boundary)."""
    count = offset = 0
    with open(path, "rb") as file:
        while offset < end:
            header = file.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            length, _ = _HEADER.unpack(header)
            file.seek(length, os.SEEK_CUR)
            offset += _HEADER.size + length
            count += 1
    return count


def _fsync_directory(directory: Path) -> None:
    """Make a created, renamed or deleted directory entry durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
