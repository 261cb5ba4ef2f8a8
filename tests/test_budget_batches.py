"""The budget stage's batches: grouping by subject, publishing on change, and letting
idle subjects go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from stream.budget_batches import BudgetBatches, ContributionRecord, TableKey
from stream.budget_definitions import BudgetIndex
from stream.contribution_batch import ContributionBatch, Entry, encode_batch
from tests.factories import make_budget
from tollgate.contract import BudgetState, BudgetWindow, Dimension, WindowKind, decode
from tollgate.ids import uuid7

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SCOPE = {Dimension.TENANT: "acme"}


def index() -> BudgetIndex:
    return BudgetIndex(
        [
            make_budget(
                budget_id="acme-hour",
                scope=SCOPE,
                window=BudgetWindow(kind=WindowKind.ROLLING, size_s=3600),
                limit_tokens=10_000,
            )
        ]
    )


def batch(offsets: range, partition: int = 0, tokens: int = 1000) -> ContributionRecord:
    value = encode_batch(
        ContributionBatch(
            state_key="acme-hour|tenant=acme",
            budget_id="acme-hour",
            subject="tenant=acme",
            scope=SCOPE,
            source_partition=partition,
            entries=[
                Entry(o, uuid7(), NOW - timedelta(minutes=5), tokens, Decimal("0.01"))
                for o in offsets
            ],
        )
    )
    return ContributionRecord(partition=3, offset=offsets.start, value=value)


def test_a_batch_is_applied_once_and_published_and_a_replay_changes_nothing() -> None:
    stage = BudgetBatches(index())
    table: dict[TableKey, bytes] = {}
    out = stage.process([batch(range(0, 4))], table.get, NOW)
    table.update(out.writes)
    (key, value) = out.states[0]
    state = decode(value, BudgetState)
    assert (key, state.spent_tokens, state.as_of_offsets) == (
        b"acme-hour|tenant=acme",
        4000,
        {0: 4},
    )
    replay = stage.process([batch(range(2, 6))], table.get, NOW)  # cut differently
    assert (replay.applied, replay.duplicates) == (2, 2)
    assert decode(replay.states[0][1], BudgetState).spent_tokens == 6000


def test_an_idle_subject_is_deleted_with_a_tombstone_and_a_live_one_kept() -> None:
    stage = BudgetBatches(index())
    table: dict[TableKey, bytes] = {}
    table.update(stage.process([batch(range(0, 2))], table.get, NOW).writes)
    writes, states = stage.expire(list(table.items()), NOW + timedelta(minutes=10))
    assert all(value is not None for value in writes.values())
    writes, states = stage.expire(list(table.items()), NOW + timedelta(hours=2))
    assert list(writes.values()) == [None]
    assert states == [(b"acme-hour|tenant=acme", None)]


def test_subjects_of_a_retired_budget_are_deleted() -> None:
    budgets = index()
    stage = BudgetBatches(budgets)
    table: dict[TableKey, bytes] = {}
    table.update(stage.process([batch(range(0, 2))], table.get, NOW).writes)
    budgets.remove("acme-hour")
    writes, states = stage.expire(list(table.items()), NOW)
    assert list(writes.values()) == [None]
    assert states == [(b"acme-hour|tenant=acme", None)]
    orphan = stage.process([batch(range(2, 3))], table.get, NOW)
    assert orphan.orphans == 1
