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
from typing import Protocol

from stream.budget_definitions import BudgetIndex, SubjectMatch
from stream.budget_engine import budget_tokens
from stream.contribution_batch import ContributionBatch, Entry, encode_batch
from tollgate.contract import Dimension, PricedEvent, UsageEvent, decode, encode
from tollgate.errors import ContractError
from tollgate.pricing import PriceCatalog


class UsageRecord(Protocol):
    """One record read from the usage topic (an aiokafka ``ConsumerRecord`` is one)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


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


_DIMENSION_FIELDS = tuple(dimension.value for dimension in Dimension)
_CACHE_MAX = 100_000


class Meter:
    def __init__(self, catalog: PriceCatalog, budgets: BudgetIndex) -> None:
        self.catalog = catalog
        self.budgets = budgets
        self._matches: dict[tuple[str | None, ...], list[SubjectMatch]] = {}
        self._matches_version = -1

    def subjects(self, event: UsageEvent) -> list[SubjectMatch]:
        """The budget subjects of ``event``; calls of the same who and what share them."""
        if self._matches_version != self.budgets.version or len(self._matches) > _CACHE_MAX:
            self._matches.clear()
            self._matches_version = self.budgets.version
        values = tuple(getattr(event, field) for field in _DIMENSION_FIELDS)
        matches = self._matches.get(values)
        if matches is None:
            matches = self._matches[values] = self.budgets.subjects(event)
        return matches

    def process(
        self, records: Iterable[UsageRecord], seen: Callable[[int, bytes], int | None]
    ) -> MeterOutput:
        out = MeterOutput()
        groups: dict[tuple[str, int], tuple[SubjectMatch, list[Entry]]] = {}
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
            tokens = budget_tokens(priced)
            if tokens is None:
                continue
            entry = Entry(record.offset, priced.event_id, priced.end_time, tokens, priced.cost_usd)
            for match in self.subjects(priced):
                group = groups.get((match.state_key, record.partition))
                if group is None:
                    group = groups[(match.state_key, record.partition)] = (match, [])
                group[1].append(entry)
        out.contributions = [
            (match.state_key.encode(), encode_batch(_batch(match, partition, entries)))
            for (_, partition), (match, entries) in groups.items()
        ]
        return out


def _batch(match: SubjectMatch, partition: int, entries: list[Entry]) -> ContributionBatch:
    return ContributionBatch(
        state_key=match.state_key,
        budget_id=match.definition.budget_id,
        subject=match.subject,
        scope=match.scope,
        source_partition=partition,
        entries=entries,
    )


def _dead(record: UsageRecord, value: bytes, reason: str) -> DeadLetter:
    return DeadLetter(record.key, value, reason, record.partition, record.offset)
