"""Rebuilding budget states from the lake equals counting the same events live."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from stream.budget_definitions import BudgetIndex
from stream.budget_engine import (
    Contribution,
    SubjectState,
    apply,
    contributions_for,
    to_budget_state,
)
from stream.rebuild import (
    oldest_live_instant,
    rebuild_from_lake,
    rebuild_states,
    rebuilt_budget_states,
)
from tests.factories import make_budget, make_priced
from tollgate.contract import (
    EACH,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    CalendarUnit,
    Dimension,
    PricedEvent,
    Status,
    WindowKind,
)
from tollgate.lake import partition_date, partition_dir, priced_to_table, write_parquet
from tollgate.lake_names import PARQUET_SUFFIX

MIDDAY = datetime(2026, 11, 3, 15, 10, 20, 500_000, tzinfo=UTC)
NEW_YORK_GRACE = datetime(2026, 11, 3, 5, 30, tzinfo=UTC)
"""00:30 in New York: the previous local day is still open to late events."""

HOURLY_TOKENS = make_budget(
    budget_id="acme-tokens-per-hour",
    scope={Dimension.TENANT: "acme"},
    window=BudgetWindow(kind=WindowKind.ROLLING, size_s=3600),
    limit_tokens=60_000,
)
DAILY_USD_NEW_YORK = make_budget(
    budget_id="acme-daily-usd",
    scope={Dimension.TENANT: "acme"},
    window=BudgetWindow(
        kind=WindowKind.CALENDAR, unit=CalendarUnit.DAY, timezone="America/New_York"
    ),
    limit_tokens=None,
    limit_usd=Decimal("1.50"),
)
EACH_TEAM_SIX_HOURS = make_budget(
    budget_id="team-usd-6h",
    scope={Dimension.TENANT: "acme", Dimension.TEAM: EACH},
    window=BudgetWindow(kind=WindowKind.ROLLING, size_s=6 * 3600),
    limit_tokens=None,
    limit_usd=Decimal("0.25"),
    thresholds_pct=[25, 50, 80, 100],
)
BUDGETS = (HOURLY_TOKENS, DAILY_USD_NEW_YORK, EACH_TEAM_SIX_HOURS)


def traffic(now: datetime, count: int = 3_000, seed: int = 7) -> list[PricedEvent]:
    """Two days of calls up to ``now`` from a few subjects, and one from a clock ahead."""
    rng = random.Random(seed)
    events = []
    for _ in range(count):
        start = now - timedelta(seconds=rng.uniform(0, 2 * 86400))
        events.append(call(rng, start))
    events.append(call(rng, now + timedelta(seconds=20)))
    events.append(
        make_priced(
            time=now - timedelta(minutes=1),
            input_tokens=0,
            output_tokens=0,
            cache_read_input_tokens=0,
            input_cost_usd=Decimal(0),
            cache_read_cost_usd=Decimal(0),
            output_cost_usd=Decimal(0),
            status=Status.REJECTED_BUDGET,
            http_status=429,
        )
    )
    return events


def call(rng: random.Random, start: datetime) -> PricedEvent:
    input_tokens = rng.randint(0, 2_000)
    cached = rng.randint(0, input_tokens)
    return make_priced(
        time=start,
        end_time=start + timedelta(microseconds=rng.randint(0, 30_000_000)),
        tenant=rng.choice(["acme", "acme", "acme", "globex"]),
        team=rng.choice(["search", "ads", "ml", None]),
        user=rng.choice(["ada", "grace", None]),
        request_model=rng.choice(["gpt-4o-mini", "claude-sonnet"]),
        input_tokens=input_tokens,
        cache_read_input_tokens=cached,
        output_tokens=rng.randint(0, 800),
        input_cost_usd=usd(rng),
        cache_read_cost_usd=usd(rng),
        output_cost_usd=usd(rng),
    )


def usd(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(0, 3_000_000_000)).scaleb(-12)


def write_lake(lake: Path, events: Sequence[PricedEvent], files_per_day: int = 3) -> None:
    """The events in their date partitions, spread over a few files per day."""
    by_day: dict[date, list[PricedEvent]] = defaultdict(list)
    for event in events:
        by_day[partition_date(event.end_time)].append(event)
    for day, day_events in by_day.items():
        for part in range(files_per_day):
            chunk = day_events[part::files_per_day]
            if chunk:
                path = partition_dir(lake, day) / f"part-{part}{PARQUET_SUFFIX}"
                write_parquet(priced_to_table(chunk), path)


def counted_live(
    events: Sequence[PricedEvent], budgets: BudgetIndex, now: datetime, batch: int = 50
) -> dict[str, SubjectState]:
    """The reference: every event through ``apply``, in event-time order, in batches."""
    ordered = sorted(events, key=lambda event: event.end_time)
    states: dict[str, SubjectState] = {}
    for first in range(0, len(ordered), batch):
        grouped = defaultdict(list)
        for offset, event in enumerate(ordered[first : first + batch], start=first):
            for contribution in contributions_for(event, budgets, partition=0, offset=offset):
                grouped[contribution.state_key].append(contribution)
        for key, contributions in grouped.items():
            definition = budgets.get(contributions[0].budget_id)
            assert definition is not None
            states[key], _ = apply(states.get(key), definition, contributions, now)
    return {key: state for key, state in states.items() if state.buckets}


def published_live(
    states: dict[str, SubjectState], budgets: BudgetIndex, now: datetime
) -> list[BudgetState]:
    published = []
    for key in sorted(states):
        definition = budgets.get(states[key].budget_id)
        assert definition is not None
        state = to_budget_state(states[key], definition, now)
        published.append(msgspec.structs.replace(state, as_of_offsets={}))
    return published


@pytest.mark.parametrize("now", [MIDDAY, NEW_YORK_GRACE], ids=["midday", "new-york-grace"])
def test_rebuilt_states_equal_counting_the_same_events_live(tmp_path: Path, now: datetime) -> None:
    budgets = BudgetIndex(BUDGETS)
    events = traffic(now)
    write_lake(tmp_path, events)
    reference = counted_live(events, budgets, now)

    rebuilt = rebuild_states(tmp_path, budgets, now)

    assert sorted(rebuilt) == sorted(reference)
    assert rebuilt_budget_states(rebuilt, budgets, now) == published_live(reference, budgets, now)
    for key, state in rebuilt.items():
        assert state.buckets == reference[key].buckets, key
        assert state.alerted == reference[key].alerted, key
        assert state.as_of_time == reference[key].as_of_time, key
        assert state.published == reference[key].published, key


def test_every_budget_and_each_team_gets_its_own_state(tmp_path: Path) -> None:
    budgets = BudgetIndex(BUDGETS)
    write_lake(tmp_path, traffic(MIDDAY))

    rebuilt = rebuild_states(tmp_path, budgets, MIDDAY)

    assert {state.budget_id for state in rebuilt.values()} == {d.budget_id for d in BUDGETS}
    team_subjects = {s.subject for s in rebuilt.values() if s.budget_id == "team-usd-6h"}
    assert team_subjects == {f"tenant=acme,team={team}" for team in ("search", "ads", "ml")}
    states = rebuilt_budget_states(rebuilt, budgets, MIDDAY)
    assert {BudgetStatus.WARNING, BudgetStatus.EXCEEDED} <= {state.status for state in states}


def test_events_outside_every_window_are_ignored(tmp_path: Path) -> None:
    budgets = BudgetIndex([HOURLY_TOKENS])
    old = make_priced(time=MIDDAY - timedelta(hours=2), input_tokens=50_000, team="old")
    recent = make_priced(time=MIDDAY - timedelta(minutes=10), input_tokens=1_000)
    write_lake(tmp_path, [old, recent])

    rebuilt = rebuild_states(tmp_path, budgets, MIDDAY)

    (state,) = rebuilt_budget_states(rebuilt, budgets, MIDDAY)
    assert state.spent_tokens == recent.input_tokens + recent.output_tokens
    assert state.as_of_time == recent.end_time


def test_a_subject_with_nothing_in_its_window_has_no_state(tmp_path: Path) -> None:
    budgets = BudgetIndex([HOURLY_TOKENS])
    write_lake(tmp_path, [make_priced(time=MIDDAY - timedelta(hours=2))])

    assert rebuild_states(tmp_path, budgets, MIDDAY) == {}


def test_partitions_older_than_every_window_are_not_read(tmp_path: Path) -> None:
    budgets = BudgetIndex([HOURLY_TOKENS])
    recent = make_priced(time=MIDDAY - timedelta(minutes=10))
    write_lake(tmp_path, [recent])
    stale = partition_dir(tmp_path, MIDDAY.date() - timedelta(days=1)) / f"x{PARQUET_SUFFIX}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"corrupt, and never opened")

    assert len(rebuild_states(tmp_path, budgets, MIDDAY)) == 1


def test_duplicates_in_the_lake_are_counted_once(tmp_path: Path) -> None:
    budgets = BudgetIndex(BUDGETS)
    events = traffic(MIDDAY, count=500)
    once, twice = tmp_path / "once", tmp_path / "twice"
    write_lake(once, events)
    write_lake(twice, events + events[:200], files_per_day=2)
    again = partition_dir(twice, MIDDAY.date()) / f"replayed{PARQUET_SUFFIX}"
    write_parquet(priced_to_table(events), again)

    assert rebuild_states(twice, budgets, MIDDAY) == rebuild_states(once, budgets, MIDDAY)


def test_thresholds_already_crossed_are_marked_alerted_and_not_crossed_again(
    tmp_path: Path,
) -> None:
    budgets = BudgetIndex([HOURLY_TOKENS])
    spent = [
        make_priced(time=MIDDAY - timedelta(minutes=m), input_tokens=10_000, output_tokens=200)
        for m in range(5, 30, 5)
    ]  # 51,000 of 60,000 tokens: 85 %
    write_lake(tmp_path, spent)
    (state,) = rebuild_states(tmp_path, budgets, MIDDAY).values()
    assert state.alerted == {0: [50, 80]}

    more = make_priced(time=MIDDAY - timedelta(minutes=1), input_tokens=1_000, output_tokens=0)
    state, outcome = apply(state, HOURLY_TOKENS, fed(more, budgets, offset=0), MIDDAY)
    assert outcome.applied == 1
    assert outcome.crossings == []

    last = make_priced(time=MIDDAY - timedelta(seconds=30), input_tokens=9_000, output_tokens=0)
    state, outcome = apply(state, HOURLY_TOKENS, fed(last, budgets, offset=1), MIDDAY)
    assert [crossing.threshold_pct for crossing in outcome.crossings] == [100]


def test_rebuilt_states_carry_no_watermarks_from_the_old_broker(tmp_path: Path) -> None:
    budgets = BudgetIndex(BUDGETS)
    write_lake(tmp_path, traffic(MIDDAY, count=300))

    rebuilt = rebuild_states(tmp_path, budgets, MIDDAY)

    assert rebuilt
    assert all(state.watermarks == {} for state in rebuilt.values())
    assert all(s.as_of_offsets == {} for s in rebuilt_budget_states(rebuilt, budgets, MIDDAY))


def test_the_first_offset_of_a_new_broker_counts(tmp_path: Path) -> None:
    budgets = BudgetIndex([HOURLY_TOKENS])
    write_lake(tmp_path, [make_priced(time=MIDDAY - timedelta(minutes=5))])
    (state,) = rebuild_states(tmp_path, budgets, MIDDAY).values()

    first = make_priced(time=MIDDAY - timedelta(minutes=1), input_tokens=700, output_tokens=0)
    state, outcome = apply(state, HOURLY_TOKENS, fed(first, budgets, offset=0), MIDDAY)

    assert outcome.applied == 1
    assert outcome.skipped_duplicates == 0


def test_budgets_no_longer_defined_are_not_published(tmp_path: Path) -> None:
    write_lake(tmp_path, traffic(MIDDAY, count=200))
    rebuilt = rebuild_states(tmp_path, BudgetIndex(BUDGETS), MIDDAY)

    published = rebuilt_budget_states(rebuilt, BudgetIndex([HOURLY_TOKENS]), MIDDAY)

    assert {state.budget_id for state in published} == {HOURLY_TOKENS.budget_id}


def test_nothing_is_rebuilt_from_an_empty_lake_or_without_budgets(tmp_path: Path) -> None:
    assert rebuild_states(tmp_path, BudgetIndex(BUDGETS), MIDDAY) == {}
    write_lake(tmp_path, traffic(MIDDAY, count=50))
    assert rebuild_states(tmp_path, BudgetIndex(), MIDDAY) == {}


def test_the_oldest_live_instant_is_where_each_window_begins() -> None:
    # One-minute buckets: the oldest still in the hour is the one holding 14:10:20.5.
    assert oldest_live_instant(HOURLY_TOKENS, MIDDAY) == datetime(2026, 11, 3, 14, 10, tzinfo=UTC)
    # New York midnight is 05:00 UTC; at 05:30 yesterday (from 05:00 UTC on the 2nd) is open.
    assert oldest_live_instant(DAILY_USD_NEW_YORK, NEW_YORK_GRACE) == datetime(
        2026, 11, 2, 5, 0, tzinfo=UTC
    )
    assert oldest_live_instant(DAILY_USD_NEW_YORK, MIDDAY) == datetime(
        2026, 11, 3, 5, 0, tzinfo=UTC
    )


def fed(event: PricedEvent, budgets: BudgetIndex, offset: int) -> list[Contribution]:
    """``event``'s contributions as a new broker would number them (partition 0)."""
    return contributions_for(event, budgets, partition=0, offset=offset)


def test_the_ids_of_recent_events_come_from_the_same_read_as_the_states(tmp_path: Path) -> None:
    """The meter drops a resent event exactly when the rebuilt states counted it: ids of
    events that ended in ``[ids_since, until)``, spent or not, each once."""
    budgets = BudgetIndex([HOURLY_TOKENS])
    until = MIDDAY - timedelta(minutes=5)
    before = make_priced(time=MIDDAY - timedelta(hours=3))  # older than the dedupe window
    counted = make_priced(time=MIDDAY - timedelta(minutes=30))
    free = make_priced(
        time=MIDDAY - timedelta(minutes=20),
        input_tokens=0,
        cache_read_input_tokens=0,
        output_tokens=0,
        input_cost_usd=Decimal(0),
        cache_read_cost_usd=Decimal(0),
        output_cost_usd=Decimal(0),
    )
    other = make_priced(time=MIDDAY - timedelta(minutes=15), tenant="globex")
    newer = make_priced(time=MIDDAY - timedelta(minutes=1))  # on the new log: counted live
    write_lake(tmp_path, [before, counted, counted, free, other, newer])

    rebuilt = rebuild_from_lake(
        tmp_path, budgets, MIDDAY, until, ids_since=MIDDAY - timedelta(hours=1)
    )

    assert rebuilt.event_ids == {e.event_id.bytes for e in (counted, free, other)}
    assert rebuilt.states == rebuild_states(tmp_path, budgets, MIDDAY, until)
    (state,) = rebuilt_budget_states(rebuilt.states, budgets, MIDDAY)
    assert state.spent_tokens == counted.input_tokens + counted.output_tokens


def test_without_budgets_the_recent_ids_are_still_read(tmp_path: Path) -> None:
    event = make_priced(time=MIDDAY - timedelta(minutes=30))
    write_lake(tmp_path, [event])

    rebuilt = rebuild_from_lake(
        tmp_path, BudgetIndex(), MIDDAY, ids_since=MIDDAY - timedelta(hours=1)
    )

    assert rebuilt.states == {}
    assert rebuilt.event_ids == {event.event_id.bytes}
