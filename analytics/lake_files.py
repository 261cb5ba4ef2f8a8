"""Which Parquet files of the lake a query reads: the live ones, listed cheaply per query.

The lake can hold, for a moment, a compacted file *and* the small files it supersedes
(compaction renames its file into place before it deletes theirs; a compaction cut
there leaves both until its next run). ``tollgate.lake.live_files`` leaves superseded
files out, so a reader listing files with it sees every row once. A glob over
``date=*/*.parquet`` would read both.

Listing every partition on every query costs a directory read and a ``stat`` per file.
``LiveFiles`` keeps each directory's listing and reads a directory again only when its
modification time changed (creating, renaming or deleting a file in it changes it). A
listing taken less than ``SETTLE_NS`` after the directory last changed is not trusted:
a second change within the same clock tick would leave the time as it was, so such a
directory is listed again on the next query, until it has been quiet for that long.
Were a change still missed, nothing would count twice: a new sink file would show at the
directory's next change, a new compacted file would leave its small files read (the
same rows), and a deleted file makes ``Lake`` list everything again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tollgate.lake import lake_dates, partition_dir
from tollgate.lake_names import live_files

SETTLE_NS = 1_000_000_000
"""How long a directory must have been unchanged before its cached listing is trusted:
far above the modification-time granularity of local file systems (a clock tick)."""

_Entry = TypeVar("_Entry")


@dataclass(frozen=True, slots=True)
class _Listing:
    mtime_ns: int
    settled: bool
    """Listed at least ``SETTLE_NS`` after the directory last changed."""
    entries: tuple[object, ...]


class LiveFiles:
    """The live files of each sub-lake of one lake, re-listed only where a directory changed.

    Not thread-safe on its own: ``Lake`` calls it under its lock.
    """

    def __init__(self, lake: Path) -> None:
        self.lake = Path(lake)
        self._listings: dict[Path, _Listing] = {}

    def files(self, sub_lake: str) -> tuple[Path, ...]:
        """Every live file of ``sub_lake``, oldest partition first, sorted within one."""
        days = self._listed(self.lake / sub_lake, lambda: lake_dates(self.lake, sub_lake))
        found: list[Path] = []
        for day in days:
            directory = partition_dir(self.lake, day, sub_lake)
            found.extend(self._listed(directory, lambda d=directory: live_files(d)))
        return tuple(found)

    def forget(self) -> None:
        """Drop every cached listing: the next ``files`` reads each directory again."""
        self._listings.clear()

    def _listed(
        self, directory: Path, listing: Callable[[], Sequence[_Entry]]
    ) -> tuple[_Entry, ...]:
        try:
            mtime_ns = os.stat(directory).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            self._listings.pop(directory, None)
            return ()
        known = self._listings.get(directory)
        if known is not None and known.settled and known.mtime_ns == mtime_ns:
            return known.entries  # type: ignore[return-value]
        listed_at_ns = time.time_ns()
        entries = tuple(listing())
        settled = mtime_ns < listed_at_ns - SETTLE_NS
        self._listings[directory] = _Listing(mtime_ns, settled, entries)
        return entries
