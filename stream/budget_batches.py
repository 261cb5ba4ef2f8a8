"""A batch of budget contributions applied to the subjects' states: contributions in,
budget states and threshold alerts out (``stream.budget_stage`` does the reading and
sending).

Contributions arrive keyed by budget state key, so one worker owns each budget subject.
A batch is grouped by key; each key's contributions are applied to its stored state in
one go (one state write per key per batch), and the state is published when what it
says has changed. Exactly once in effect: the state carries, per usage partition, the
next offset not yet counted, and contributions below it are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from stream.budget_definitions import BudgetIndex
from stream.budget_engine import (
    Contribution,
    SubjectState,
    ThresholdCrossing,
    apply,
    decode_state,
    encode_state,
    expire,
    is_idle,
    to_budget_state,
)
from stream.contribution_batch import decode_batch
from tollgate.contract import Alert, AlertKind, BudgetDefinition, Severity, encode, state_key
from tollgate.ids import uuid7_for

log = logging.getLogger(__name__)


TableKey = tuple[int, bytes]
"""Where a subject's state is kept: the contributions partition it comes in on, and its
state key. A partition's subjects move to another worker together."""


@dataclass(frozen=True, slots=True)
class ContributionRecord:
    partition: int
    offset: int
    value: bytes | None


@dataclass
class BudgetOutput:
    writes: dict[TableKey, bytes] = field(default_factory=dict)
    """(contributions partition, state key) → new subject state."""
    states: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(state key, BudgetState) for the compacted state topic."""
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    orphans: int = 0
    """Contributions to budgets no longer defined."""


class BudgetBatches:
    def __init__(self, budgets: BudgetIndex) -> None:
        self.budgets = budgets
        self.seeds: dict[str, SubjectState] = {}
        """States rebuilt from the lake for subjects the broker's history no longer holds:
        each seeds its subject the first time the subject is met and has no stored state."""

    def process(
        self,
        records: Iterable[ContributionRecord],
        load: Callable[[TableKey], bytes | None],
        now: datetime,
    ) -> BudgetOutput:
        out = BudgetOutput()
        grouped: dict[TableKey, list[Contribution]] = {}
        for record in records:
            if record.value is None:
                continue
            try:
                batch = decode_batch(record.value)
            except Exception as error:  # internal topic: a bug, not a caller's input
                log.error("unreadable budget contributions at offset %s: %s", record.offset, error)
                continue
            key = (record.partition, batch.state_key.encode())
            grouped.setdefault(key, []).extend(batch.contributions())
        for table_key, contributions in grouped.items():
            definition = self.budgets.get(contributions[0].budget_id)
            if definition is None:
                out.orphans += len(contributions)
                continue
            stored = out.writes.get(table_key) or load(table_key)
            state = (
                decode_state(stored) if stored else self.seeds.pop(contributions[0].state_key, None)
            )
            new_state, outcome = apply(state, definition, contributions, now)
            out.applied += outcome.applied
            out.duplicates += outcome.skipped_duplicates
            out.late += outcome.dropped_late
            out.writes[table_key] = encode_state(new_state)
            if outcome.changed:
                out.states.append(_state_record(new_state, definition, now))
            for crossing in outcome.crossings:
                out.alerts.append(_threshold_alert(new_state, definition, crossing))
        return out

    def expire(
        self, items: Iterable[tuple[TableKey, bytes]], now: datetime
    ) -> tuple[dict[TableKey, bytes | None], list[tuple[bytes, bytes | None]]]:
        """Let time pass over stored states: sliding windows decay, periods roll over.

        Returns table writes (None: delete the key) and records for the state topic
        (None: a tombstone). A subject whose spend has all left its window, or whose
        budget is gone, is deleted, so the state stays bounded by the active subjects.
        """
        writes: dict[TableKey, bytes | None] = {}
        states: list[tuple[bytes, bytes | None]] = []
        for table_key, stored in items:
            state = decode_state(stored)
            definition = self.budgets.get(state.budget_id)
            if definition is None or is_idle(state, definition, now):
                writes[table_key] = None
                states.append((state_key(state.budget_id, state.subject).encode(), None))
                continue
            new_state, changed = expire(state, definition, now)
            if changed:
                writes[table_key] = encode_state(new_state)
                states.append(_state_record(new_state, definition, now))
        return writes, states


def _state_record(
    state: SubjectState, definition: BudgetDefinition, now: datetime
) -> tuple[bytes, bytes]:
    budget_state = to_budget_state(state, definition, now)
    return budget_state.key().encode(), encode(budget_state)


def _threshold_alert(
    state: SubjectState, definition: BudgetDefinition, crossing: ThresholdCrossing
) -> tuple[bytes, bytes]:
    pct = crossing.threshold_pct
    severity = Severity.CRITICAL if pct >= 100 else Severity.WARNING if pct >= 80 else Severity.INFO
    spent = (
        f"${crossing.spent_usd:.2f} of ${definition.limit_usd:.2f}"
        if definition.limit_usd is not None
        else f"{crossing.spent_tokens:,} of {definition.limit_tokens:,} tokens"
    )
    verb = "blocks calls" if definition.action.value == "block" and pct >= 100 else "alerts"
    window_ms = int(crossing.window_start.timestamp() * 1000)
    alert = Alert(
        alert_id=uuid7_for(
            window_ms, f"{definition.budget_id}|{state.subject}|{window_ms}|{pct}".encode()
        ),
        kind=AlertKind.BUDGET_THRESHOLD,
        severity=severity,
        time=state.as_of_time or crossing.window_start,
        subject=state.subject,
        scope=dict(state.scope),
        summary=(
            f"budget {definition.budget_id!r} for {state.subject} reached {pct}% "
            f"({spent}); the budget {verb}"
        ),
        budget_id=definition.budget_id,
        threshold_pct=pct,
        spent_usd=crossing.spent_usd,
        limit_usd=definition.limit_usd,
        since=crossing.window_start,
    )
    return state.subject.encode(), encode(alert)
