"""The sink's memory of the ids it kept from one partition, to drop a second copy.

The meter publishes an event again when it crashed after sending it and before
committing; the copy lands later in the same partition (events are keyed by tenant).
The sink remembers each kept id with the offset it was kept at, for the last
``window_offsets`` offsets of the partition, and drops an id met again at *another*
offset. The same id at the same offset is the same record read again (a restart
completing its newest range) and is kept. Seeded on start from the lake's newest files
(``sink_files.recent_ids``); a copy older than the window is left to compaction, which
drops every copy of a day (copies share ``end_time``, hence a date).

When the broker lost its log, the partition starts a new generation from offset 0, and
a gateway may resend events the dead broker had acknowledged: every id remembered then
counts as a copy, and so do the ids the lake holds of the partition's recent events
(``know``), until the new generation is ``window_offsets`` long.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

_ANY_COPY = -1
"""The offset of an id no record can be the first copy of (none has offset -1)."""


class RecentIds:
    def __init__(self, window_offsets: int, seed: Mapping[str, int] | None = None) -> None:
        self.window_offsets = window_offsets
        self._offsets: dict[str, int] = dict(seed or {})
        self._chunks: deque[tuple[int, list[str]]] = deque()
        if self._offsets:
            self._chunks.append((max(self._offsets.values()), list(self._offsets)))

    def __len__(self) -> int:
        return len(self._offsets)

    def keep(self, ids: Sequence[str], offsets: Sequence[int]) -> list[bool] | None:
        """Per row, whether it is the first copy in the window; None if all are."""
        if not self.window_offsets:
            return None
        known = self._offsets
        mask: list[bool] | None = None
        kept: list[str] = []
        for i, (event_id, offset) in enumerate(zip(ids, offsets, strict=True)):
            first = known.get(event_id)
            if first is None:
                known[event_id] = offset
                kept.append(event_id)
            elif first != offset:
                if mask is None:
                    mask = [True] * len(ids)
                mask[i] = False
        if kept:
            self._chunks.append((offsets[-1], kept))
            self._expire(offsets[-1] - self.window_offsets)
        return mask

    def forget_offsets(self) -> None:
        """The partition's log starts again (a new generation): offsets no longer tell a
        record read again from a copy, so every id remembered counts as a copy."""
        for event_id in self._offsets:
            self._offsets[event_id] = _ANY_COPY
        self._chunks = deque([(_ANY_COPY, list(self._offsets))] if self._offsets else [])

    def know(self, ids: Iterable[str]) -> None:
        """Count every copy of ``ids`` (the lake holds them) as a second one."""
        if not self.window_offsets:
            return
        new = [event_id for event_id in ids if event_id not in self._offsets]
        for event_id in new:
            self._offsets[event_id] = _ANY_COPY
        if new:
            self._chunks.appendleft((_ANY_COPY, new))

    def _expire(self, below: int) -> None:
        while self._chunks and self._chunks[0][0] < below:
            last, ids = self._chunks.popleft()
            for event_id in ids:
                offset = self._offsets.get(event_id)
                if offset is not None and offset <= last:
                    del self._offsets[event_id]
