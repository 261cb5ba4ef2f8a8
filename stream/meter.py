"""The meter: usage events in, priced events and budget contributions out.

It reads the usage topic in batches. Each record is decoded and validated (a poison
record goes to the dead-letter topic with its reason), checked against the ids already
seen (the gateway delivers at least once), priced with the catalog, and split into the
contributions it makes to each budget it falls under.

Remembering ids: ``seen`` gives the offset an id was first seen at in its partition.
The same id at the *same* offset is this record read again after a restart (its
contributions are sent again and the budget stage's watermarks drop them); at another
offset it is a redelivery, dropped here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from stream.budget_definitions import BudgetIndex
from stream.budget_engine import Contribution, contributions_for
from stream.contribution_batch import batch_contributions, encode_batch
from tollgate.contract import PricedEvent, UsageEvent, decode, encode
from tollgate.errors import ContractError
from tollgate.pricing import PriceCatalog


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One record read from the usage topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_s: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    reason: str
    partition: int
    offset: int


@dataclass
class MeterOutput:
    """What a batch makes, in the order it must be sent."""

    priced: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(tenant, priced event) for the priced topic."""
    contributions: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(state key, batch of its contributions) for the contributions topic."""
    dead: list[DeadLetter] = field(default_factory=list)
    seen: dict[int, list[tuple[bytes, int]]] = field(default_factory=dict)
    """Ids first seen in this batch, per partition, with their offsets."""
    duplicates: int = 0
    priced_events: list[PricedEvent] = field(default_factory=list)


class Meter:
    def __init__(self, catalog: PriceCatalog, budgets: BudgetIndex) -> None:
        self.catalog = catalog
        self.budgets = budgets

    def process(
        self, records: Iterable[UsageRecord], seen: Callable[[int, bytes], int | None]
    ) -> MeterOutput:
        out = MeterOutput()
        contributions: list[Contribution] = []
        batch_seen: dict[tuple[int, bytes], int] = {}
        for record in records:
            if record.value is None:
                out.dead.append(_dead(record, b"", "empty record (no value)"))
                continue
            try:
                event = decode(record.value, UsageEvent)
            except ContractError as error:
                out.dead.append(_dead(record, record.value, str(error)))
                continue
            event_id = event.event_id.bytes
            first = batch_seen.get((record.partition, event_id))
            if first is None:
                first = seen(record.partition, event_id)
            if first is not None and first != record.offset:
                out.duplicates += 1
                continue
            if first is None:
                batch_seen[(record.partition, event_id)] = record.offset
                out.seen.setdefault(record.partition, []).append((event_id, record.offset))
            priced = self.catalog.price(event)
            out.priced_events.append(priced)
            out.priced.append(((event.tenant or "").encode(), encode(priced)))
            contributions += contributions_for(
                priced, self.budgets, partition=record.partition, offset=record.offset
            )
        out.contributions = [
            (batch.state_key.encode(), encode_batch(batch))
            for batch in batch_contributions(contributions)
        ]
        return out


def _dead(record: UsageRecord, value: bytes, reason: str) -> DeadLetter:
    return DeadLetter(record.key, value, reason, record.partition, record.offset)
