"""One topic partition on its way into the lake: check the log, complete the newest
range, then buffer records and roll them into ranges.

A partition starts in one of two ways (``stream.sink_files`` has the invariant):

- The lake holds none of it: read from the log's beginning, as generation 0.
- The lake holds ranges of it: read again from the newest range's ``first`` offset.
  The broker still holds the log the lake came from if that log reaches the lake's
  last offset, and the first record fetched is the range's first (same offset, same
  timestamp) or lies past it (retention or compaction removed the first). Then the
  range is *completed*: read up to exactly its ``last`` offset, whatever the roll
  settings, and written under its own name, only the date files that are missing.
  Otherwise the broker's log is a new one (a broker that lost its log numbers offsets
  from 0 again): the partition starts a new generation from the log's beginning.

After that, records are buffered and rolled into a range when the buffer holds
``roll_rows`` rows or its first record is ``roll_s`` old. The buffer is plain memory: a
crash loses it, and the restart reads it again.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from enum import Enum, auto

import pyarrow as pa

from stream.sink_dedupe import RecentIds
from stream.sink_files import PartitionHistory
from stream.sink_rows import RowDecoder, SourceRecord
from tollgate.lake import SCHEMAS
from tollgate.lake_names import RangeName


@dataclass(frozen=True)
class RangeWrite:
    """A range ready to be written (``sink_files.write_range``)."""

    sub_lake: str
    name: RangeName
    table: pa.Table
    completing: bool = False


@dataclass
class Taken:
    """What a batch of records made."""

    writes: list[RangeWrite] = field(default_factory=list)
    read_from_beginning: bool = False
    """The broker's log is not the lake's: seek to its beginning (a new generation)."""
    why: str = ""
    """What told the log was a new one (for the log line)."""
    rows: int = 0
    """Rows buffered (after dropping second copies)."""
    duplicates: list[int] = field(default_factory=list)
    """Offsets of second copies, dropped."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    read_to: int | None = None
    """The offset after the last record taken (None: none taken)."""


class _Mode(Enum):
    CHECKING = auto()
    """Waiting for the first record after seeking to the newest range."""
    COMPLETING = auto()
    """Reading the newest range again, up to its last offset."""
    OPEN = auto()


@dataclass
class _Buffer:
    chunks: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    first_offset: int | None = None
    first_timestamp_ms: int = -1
    last_offset: int = -1
    opened_at: float = 0.0


class PartitionSink:
    def __init__(
        self,
        sub_lake: str,
        topic: str,
        partition: int,
        history: PartitionHistory | None,
        *,
        decoder: RowDecoder,
        id_column: str | None,
        seen: RecentIds | None,
        roll_rows: int,
        roll_s: float,
    ) -> None:
        self.sub_lake = sub_lake
        self.topic = topic
        self.partition = partition
        self.decoder = decoder
        self.id_column = id_column
        self.seen = seen
        self.roll_rows = roll_rows
        self.roll_s = roll_s
        self.generation = history.generation if history else 0
        self.newest = history.newest if history else None
        self.start_offset: int | None = (
            self.newest.first if self.newest else (history.next_offset if history else None)
        )
        """Where to seek on assignment; None: the log's beginning."""
        self.written_next: int | None = history.next_offset if history else None
        """The first offset no written range holds (set by the writer, via ``written``)."""
        self._mode = _Mode.CHECKING if self.newest else _Mode.OPEN
        self._buffer = _Buffer()
        self._next: int = (self.written_next or 0) if self.newest else (self.start_offset or 0)
        """No record of this log can be below it: past the lake's last offset while
        checking, past the last record taken after."""

    @property
    def next_offset(self) -> int:
        """Where reading takes up: the newest range's first offset while checking, the
        offset after the last record taken after."""
        if self._mode is _Mode.CHECKING:
            return self.start_offset or 0
        return self._next

    @property
    def completing(self) -> bool:
        """Reading the newest range again (after the check, before its last offset)."""
        return self._mode is _Mode.COMPLETING

    def take(self, records: list[SourceRecord], now: float) -> Taken:
        """Add a fetched batch (offset order); returns the ranges it completed."""
        taken = Taken()
        if not records:
            return taken
        if self._mode is _Mode.CHECKING:
            if not self._same_log(records[0]):
                return self._new_log(
                    f"the first record read (offset {records[0].offset}, time "
                    f"{records[0].timestamp}) is not the newest range's first "
                    f"({self.newest.first}, time {self.newest.first_timestamp_ms})"  # type: ignore[union-attr]
                )
            self._mode = _Mode.COMPLETING
        elif records[0].offset < self._next:
            return self._new_log(f"offset {records[0].offset} came after {self._next - 1}")
        self._next = records[-1].offset + 1
        if self._mode is _Mode.COMPLETING:
            assert self.newest is not None
            offsets = [record.offset for record in records]
            inside = bisect.bisect_right(offsets, self.newest.last)
            self._add(records[:inside], now, taken)
            if inside < len(records) or offsets[-1] >= self.newest.last:
                taken.writes.append(self._roll(self.newest))
            records = records[inside:]
        if self._mode is _Mode.OPEN and records:
            self._add(records, now, taken)
            if self._buffer.rows >= self.roll_rows:
                taken.writes.append(self._roll())
        return taken

    def passed(self, position: int) -> RangeWrite | None:
        """Complete the newest range if the consumer is past its last offset with no
        record there (the log no longer holds it, and nothing came after)."""
        completing = self._mode is _Mode.COMPLETING and self.newest is not None
        if completing and position > self.newest.last:  # type: ignore[union-attr]
            return self._roll(self.newest)
        return None

    def due(self, now: float) -> RangeWrite | None:
        """The buffer as a range, if its first record is ``roll_s`` old."""
        buffer = self._buffer
        if self._mode is _Mode.OPEN and buffer.first_offset is not None:
            return self._roll() if now - buffer.opened_at >= self.roll_s else None
        return None

    def flush(self) -> RangeWrite | None:
        """The buffer as a range, now (on a clean stop). A range being completed is left
        to the next start: it must end at its own last offset."""
        if self._mode is _Mode.OPEN and self._buffer.first_offset is not None:
            return self._roll()
        return None

    def check_highwater(self, highwater: int) -> Taken | None:
        """A log whose end lies before records already taken from it (or before the
        lake's last offset, while checking) is another log, that began again: the buffer
        is written as it is, and a new generation starts. None if the log is the same.

        (A broker may not answer a fetch past its log's end with an error; the end is
        what tells. A new log that already grew past the old position goes unnoticed.)
        """
        if highwater >= self._next:
            return None
        return self._new_log(f"the log ends at {highwater}, before offset {self._next}")

    def written(self, name: RangeName) -> None:
        """The writer wrote ``name`` (the lake now holds the partition up to its end)."""
        if name.generation == self.generation:
            self.written_next = name.last + 1

    def _same_log(self, record: SourceRecord) -> bool:
        assert self.newest is not None
        if record.offset == self.newest.first:
            return record.timestamp == self.newest.first_timestamp_ms
        return record.offset > self.newest.first

    def _new_log(self, why: str) -> Taken:
        taken = Taken(read_from_beginning=True, why=why)
        if self._buffer.first_offset is not None:  # records of the old log: keep them
            completing = self.newest if self._mode is _Mode.COMPLETING else None
            taken.writes.append(self._roll(completing))
        self.generation += 1
        self.newest = None
        self.written_next = None
        self._next = 0
        self._mode = _Mode.OPEN
        if self.seen is not None:
            self.seen.forget_offsets()
        return taken

    def _add(self, records: list[SourceRecord], now: float, taken: Taken) -> None:
        if not records:
            return
        rows = self.decoder(self.topic, self.partition, records)
        taken.rejected += rows.rejected
        table = rows.table
        if self.seen is not None and self.id_column is not None and table.num_rows:
            keep = self.seen.keep(
                table.column(self.id_column).to_pylist(), table.column("_offset").to_pylist()
            )
            if keep is not None:
                offsets = table.column("_offset")
                taken.duplicates += [
                    o for o, k in zip(offsets.to_pylist(), keep, strict=True) if not k
                ]
                table = table.filter(pa.array(keep, pa.bool_()))
        buffer = self._buffer
        if buffer.first_offset is None:
            buffer.first_offset = records[0].offset
            buffer.first_timestamp_ms = records[0].timestamp
            buffer.opened_at = now
        buffer.last_offset = records[-1].offset
        taken.read_to = records[-1].offset + 1
        if table.num_rows:
            buffer.chunks.append(table)
            buffer.rows += table.num_rows
            taken.rows += table.num_rows

    def _roll(self, completing: RangeName | None = None) -> RangeWrite:
        buffer, self._buffer = self._buffer, _Buffer()
        if completing is not None:
            name = completing
            self._mode = _Mode.OPEN
        else:
            assert buffer.first_offset is not None
            name = RangeName(
                self.topic,
                self.partition,
                self.generation,
                buffer.first_offset,
                buffer.last_offset,
                buffer.first_timestamp_ms,
            )
        schema = SCHEMAS[self.sub_lake]
        table = pa.concat_tables(buffer.chunks) if buffer.chunks else schema.empty_table()
        return RangeWrite(self.sub_lake, name, table, completing=completing is not None)
