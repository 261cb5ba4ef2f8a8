"""Each partition's records reach an agent in offset order, none left out.

The meter's dedupe tells a record read again from a copy by its offset, and the budgets
count each usage partition up to a watermark: both assume that a partition is read in
order. Faust does not always keep to that. Around a rebalance it skips records fetched
for the previous group generation (and acknowledges them), so the agent can be handed
offset 54 of a partition whose committed offset is 52; 52 and 53 then never come (seen
on the embedded broker, where a restarted worker meets a rebalance as the member it
replaced times out).

``InOrder`` holds, per partition, the next offset the agent must see. It starts at the
offset the partition was assigned from: the group's committed offset, asked of the broker
(``tollgate.group_offsets``). A record before it was processed already and is
dropped. A record past it leaves a *gap*: the agent reads the missing offsets straight
from the broker (``stream.direct_reader``) and processes them before the record.
(Seeking Faust's consumer back instead did not bring the records reliably.)

A skip at the end of what a partition holds leaves no later record to show it: when the
traffic stops there, the records would wait for the worker's next restart. So a partition
that has been *quiet* (nothing admitted) for a while is read from its next offset straight
from the broker too; whatever is there goes through ``admit`` like any record, so a copy
Faust brings later is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Admitted:
    """What a batch may go on with."""

    indexes: list[int] = field(default_factory=list)
    """Positions, in the batch, of the records to process (in the batch's order)."""
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per partition, the offsets [first, end) to read and process before the others."""


class InOrder:
    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._next: dict[int, int] = {}
        self._active_at: dict[int, float] = {}
        """Per partition, when a record was last admitted (or it was started, or checked)."""

    def unknown(self, partitions: Iterable[int]) -> set[int]:
        """Partitions with no starting offset yet (new since the last ``forget``)."""
        return {partition for partition in partitions if partition not in self._next}

    def start(self, partition: int, offset: int) -> None:
        """The partition was assigned from ``offset``: its next record must be that one."""
        self._next[partition] = offset
        self._active_at[partition] = self._clock()

    def next_offset(self, partition: int) -> int:
        """The offset the partition's next record must have (it must be started)."""
        return self._next[partition]

    def quiet(self, partitions: Iterable[int], after_s: float) -> list[int]:
        """Of ``partitions`` (this worker's), those with nothing admitted for ``after_s``.

        The caller checks their tails now, so their quiet time starts over. A partition
        seen here for the first time starts its quiet time here.
        """
        now = self._clock()
        found = []
        for partition in partitions:
            since = self._active_at.setdefault(partition, now)
            if now - since >= after_s:
                found.append(partition)
                self._active_at[partition] = now
        return sorted(found)

    def forget(self) -> None:
        """The partitions were revoked: each starts again on its next assignment."""
        self._next.clear()
        self._active_at.clear()

    def admit(self, records: Sequence[tuple[int, int]]) -> Admitted:
        """Which of ``records`` ((partition, offset), in arrival order) to process, and
        the gaps to fill first. The gaps count as processed once this returns."""
        admitted = Admitted()
        now = self._clock()
        for index, (partition, offset) in enumerate(records):
            expected = self._next.get(partition, offset)
            if offset < expected:
                continue  # processed already
            if offset > expected:
                admitted.gaps[partition] = (expected, offset)
            admitted.indexes.append(index)
            self._next[partition] = offset + 1
            self._active_at[partition] = now
        return admitted
