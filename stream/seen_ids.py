"""Ids of the usage events already metered, per usage partition, for the dedupe window.

Kept in a source-partitioned Faust table, one entry per meter batch (a changelog record
per batch, not per event), and indexed in memory. After a restart or a rebalance the
table is recovered from its changelog and the index rebuilt from it, so a redelivery is
recognised across restarts. Entries older than the window are deleted.
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping

from stream.partitioned_table import partition_key

_HEADER = struct.Struct(">d")
_ENTRY = struct.Struct(">16sq")


class SeenIds:
    def __init__(self, table: MutableMapping[bytes, bytes], window_s: float) -> None:
        self.table = table
        self.window_s = window_s
        self._index: dict[int, dict[bytes, int]] = {}
        self._batches: dict[int, list[tuple[float, bytes]]] = {}

    def first_offset(self, partition: int, event_id: bytes) -> int | None:
        """The offset ``event_id`` was first metered at in ``partition``, if it was."""
        return self._indexed(partition).get(event_id)

    def record(self, partition: int, entries: list[tuple[bytes, int]], now_s: float) -> None:
        """Remember a batch's new ids (16-byte UUIDs with their offsets)."""
        if not entries:
            return
        index = self._indexed(partition)
        key = partition_key(partition, b"%020d" % entries[0][1])
        value = _HEADER.pack(now_s) + b"".join(_ENTRY.pack(i, o) for i, o in entries)
        self.table[key] = value
        self._batches.setdefault(partition, []).append((now_s, key))
        for event_id, offset in entries:
            index.setdefault(event_id, offset)

    def expire(self, now_s: float) -> int:
        """Forget batches older than the window; returns how many were deleted."""
        deleted = 0
        for partition, batches in self._batches.items():
            index = self._index.get(partition)
            while batches and batches[0][0] < now_s - self.window_s:
                _, key = batches.pop(0)
                value = self.table.pop(key, None)
                deleted += 1
                if index is not None and value is not None:
                    for event_id, offset in _entries(value):
                        if index.get(event_id) == offset:
                            del index[event_id]
        return deleted

    def forget_index(self) -> None:
        """Drop the in-memory index (partitions moved): it is rebuilt from the table."""
        self._index.clear()
        self._batches.clear()

    def _indexed(self, partition: int) -> dict[bytes, int]:
        index = self._index.get(partition)
        if index is None:
            index, batches = {}, []
            prefix = b"%d|" % partition
            for key, value in list(self.table.items()):
                key = bytes(key)
                if not key.startswith(prefix):
                    continue
                batches.append((_HEADER.unpack_from(value)[0], key))
                for event_id, offset in _entries(value):
                    index.setdefault(event_id, offset)
            batches.sort()
            self._index[partition] = index
            self._batches[partition] = batches
        return index


def _entries(value: bytes) -> list[tuple[bytes, int]]:
    return [
        _ENTRY.unpack_from(value, position)
        for position in range(_HEADER.size, len(value), _ENTRY.size)
    ]
