"""What the files of a lake partition say by their names, and which of them are live.

The sink names each file after the topic partition and offset range it holds; compaction
names a merged file after the ranges it covers. Those names are what makes exactly-once
writes checkable, and what lets a reader skip files a compacted one supersedes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PARQUET_SUFFIX = ".parquet"
"""A finished lake file (a file being written ends in ``.tmp`` and is never read)."""

_RANGE_NAME = re.compile(
    r"^(?P<topic>.+)-p(?P<partition>\d{4,})-g(?P<generation>\d{4,})-"
    r"(?:o(?P<first>\d{20})-o(?P<last>\d{20})-t(?P<timestamp>-?\d+)"
    r"|c(?P<cfirst>\d{20})-c(?P<clast>\d{20}))\.parquet$"
)


@dataclass(frozen=True)
class RangeName:
    """What a file holds, told by its name: the records ``first`` to ``last`` (offsets,
    both included) of one topic partition, in one generation of its broker log.

    The sink writes ``<topic>-p0003-g0000-o<first>-o<last>-t<ms>.parquet`` (offsets
    zero-padded to 20 digits, so names sort), where ``<ms>`` is the broker timestamp of
    record ``first``: it lets a restarted sink check that the broker still holds the log
    the lake was written from. A broker that lost its log (the embedded one keeps nothing
    on disk) numbers offsets from 0 again; the sink then counts a new ``generation``, so
    the new log's files never take an old name. Compaction writes
    ``<topic>-p0003-g0000-c<first>-c<last>.parquet``, covering every file of that
    partition and generation in its directory whose range lies within its own.
    """

    topic: str
    partition: int
    generation: int
    first: int
    last: int
    first_timestamp_ms: int | None = None
    """The broker timestamp of record ``first``; None for a compacted file."""
    compacted: bool = False

    @property
    def source(self) -> tuple[str, int, int]:
        """(topic, partition, generation): the log the offsets count in."""
        return (self.topic, self.partition, self.generation)

    @property
    def file_name(self) -> str:
        head = f"{self.topic}-p{self.partition:04d}-g{self.generation:04d}"
        if self.compacted:
            return f"{head}-c{self.first:020d}-c{self.last:020d}{PARQUET_SUFFIX}"
        stamp = self.first_timestamp_ms if self.first_timestamp_ms is not None else -1
        return f"{head}-o{self.first:020d}-o{self.last:020d}-t{stamp}{PARQUET_SUFFIX}"

    @classmethod
    def parse(cls, file_name: str) -> RangeName | None:
        """The range a file name stands for; None for a name no sink wrote."""
        match = _RANGE_NAME.match(file_name)
        if match is None:
            return None
        head = (match["topic"], int(match["partition"]), int(match["generation"]))
        if match["first"] is not None:
            return cls(*head, int(match["first"]), int(match["last"]), int(match["timestamp"]))
        return cls(*head, int(match["cfirst"]), int(match["clast"]), compacted=True)

    def covers(self, other: RangeName) -> bool:
        """Whether this compacted file holds every row ``other`` (in the same directory) holds."""
        return (
            self.compacted
            and other != self
            and other.source == self.source
            and self.first <= other.first
            and other.last <= self.last
        )


def superseded(names: Iterable[RangeName]) -> set[RangeName]:
    """The names, among those of one directory, that a compacted file there covers."""
    names = list(names)
    compacted = [name for name in names if name.compacted]
    return {name for name in names if any(c.covers(name) for c in compacted)}


def live_files(directory: Path) -> list[Path]:
    """The finished Parquet files of a date partition, less the superseded ones, sorted.

    Files whose names no sink wrote are live. A reader listing files with this sees every
    row of the partition once, also between a compaction's writing and its deleting.
    """
    try:
        with os.scandir(directory) as entries:  # scandir: no stat call per file
            files = {
                entry.name: Path(entry.path)
                for entry in entries
                if entry.name.endswith(PARQUET_SUFFIX) and entry.is_file()
            }
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = {name: RangeName.parse(name) for name in files}
    gone = superseded(name for name in names.values() if name is not None)
    return [files[name] for name in sorted(files) if names[name] not in gone]
