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
from the broker (``stream.gap_reader.read_range``) and processes them before the record.
(Seeking Faust's consumer back instead did not bring the records reliably.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Admitted:
    """What a batch may go on with."""

    indexes: list[int] = field(default_factory=list)
    """Positions, in the batch, of the records to process (in the batch's order)."""
    gaps: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per partition, the offsets [first, end) to read and process before the others."""


class InOrder:
    def __init__(self, name: str) -> None:
        self.name = name
        self._next: dict[int, int] = {}

    def unknown(self, partitions: Iterable[int]) -> set[int]:
        """Partitions with no starting offset yet (new since the last ``forget``)."""
        return {partition for partition in partitions if partition not in self._next}

    def start(self, partition: int, offset: int) -> None:
        """The partition was assigned from ``offset``: its next record must be that one."""
        self._next[partition] = offset

    def forget(self) -> None:
        """The partitions were revoked: each starts again on its next assignment."""
        self._next.clear()

    def admit(self, records: Sequence[tuple[int, int]]) -> Admitted:
        """Which of ``records`` ((partition, offset), in arrival order) to process, and
        the gaps to fill first. The gaps count as processed once this returns."""
        admitted = Admitted()
        for index, (partition, offset) in enumerate(records):
            expected = self._next.get(partition, offset)
            if offset < expected:
                continue  # processed already
            if offset > expected:
                admitted.gaps[partition] = (expected, offset)
            admitted.indexes.append(index)
            self._next[partition] = offset + 1
        return admitted
