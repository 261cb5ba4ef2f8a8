"""Ids of the usage events already metered, per usage partition, for the dedupe window.

Kept in a changelog table (``stream.changelog``), one entry per meter batch (a changelog
record per batch, not per event), and indexed in memory. A worker that takes a partition
over restores its entries and indexes them, so a redelivery is recognised across
restarts. Entries older than the window are deleted.

After the broker lost its history the changelog holds nothing of the events metered
before, but the lake does: the ids of the events it holds that ended within the window
(``seed_from_lake``) are known too, at no offset, so that any copy of one is dropped.
They are kept for one window, as long as a gateway may resend an event.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable

from stream.changelog import ChangelogTable

_HEADER = struct.Struct(">d")
_ENTRY = struct.Struct(">16sq")
IN_THE_LAKE = -1
"""The offset ``first_offset`` gives an id known from the lake: none a record can have."""


class SeenIds:
    def __init__(self, table: ChangelogTable, window_s: float) -> None:
        self.table = table
        self.window_s = window_s
        self._index: dict[int, dict[bytes, int]] = {}
        self._batches: dict[int, deque[tuple[float, bytes]]] = {}
        self._in_lake: set[bytes] = set()
        self._in_lake_until_s = 0.0

    def first_offset(self, partition: int, event_id: bytes) -> int | None:
        """The offset ``event_id`` was first metered at in ``partition``, if it was;
        ``IN_THE_LAKE`` if it was metered before the broker lost its history."""
        index = self._index.get(partition)
        first = None if index is None else index.get(event_id)
        if first is None and event_id in self._in_lake:
            return IN_THE_LAKE
        return first

    def seed_from_lake(self, event_ids: set[bytes], now_s: float) -> None:
        """Know ``event_ids`` (16-byte UUIDs the lake holds) for one window from now."""
        self._in_lake = event_ids
        self._in_lake_until_s = now_s + self.window_s

    def record(self, partition: int, entries: list[tuple[bytes, int]], now_s: float) -> None:
        """Remember a batch's new ids (16-byte UUIDs with their offsets)."""
        if not entries:
            return
        key = b"%020d" % entries[0][1]
        self.table.set(
            partition, key, _HEADER.pack(now_s) + b"".join(_ENTRY.pack(i, o) for i, o in entries)
        )
        self._batches.setdefault(partition, deque()).append((now_s, key))
        index = self._index.setdefault(partition, {})
        for event_id, offset in entries:
            index.setdefault(event_id, offset)

    def expire(self, now_s: float) -> int:
        """Forget batches older than the window; returns how many were deleted."""
        if self._in_lake and now_s > self._in_lake_until_s:
            self._in_lake = set()
        deleted = 0
        for partition, batches in self._batches.items():
            index = self._index.get(partition, {})
            while batches and batches[0][0] < now_s - self.window_s:
                _, key = batches.popleft()
                value = self.table.get(partition, key)
                self.table.delete(partition, key)
                deleted += 1
                for event_id, offset in _entries(value or b""):
                    if index.get(event_id) == offset:
                        del index[event_id]
        return deleted

    def index(self, partitions: Iterable[int]) -> None:
        """Index what the table holds of ``partitions`` (restored from the changelog)."""
        for partition in partitions:
            index: dict[bytes, int] = {}
            batches = []
            for key, value in self.table.partition(partition).items():
                batches.append((_HEADER.unpack_from(value)[0], key))
                for event_id, offset in _entries(value):
                    index.setdefault(event_id, offset)
            batches.sort()
            self._index[partition] = index
            self._batches[partition] = deque(batches)

    def drop(self, partitions: Iterable[int]) -> None:
        partitions = set(partitions)
        for partition in partitions:
            self._index.pop(partition, None)
            self._batches.pop(partition, None)
        self.table.drop(partitions)


def _entries(value: bytes) -> list[tuple[bytes, int]]:
    return [
        _ENTRY.unpack_from(value, position)
        for position in range(_HEADER.size, len(value), _ENTRY.size)
    ]
