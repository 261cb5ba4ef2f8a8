"""The budget stage: windows, exactly-once counting by watermark, thresholds, the
published state, and the definitions that drive it (YAML file and index)."""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from stream.budget_definitions import BudgetIndex, load_budgets
from stream.budget_engine import (
    Contribution,
    Outcome,
    SubjectState,
    apply,
    contributions_for,
    decode_contribution,
    decode_state,
    encode_contribution,
    encode_state,
    expire,
    is_idle,
    to_budget_state,
)
from tests.factories import T0, make_budget, make_priced
from tollgate.contract import (
    EACH,
    BudgetAction,
    BudgetDefinition,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    CalendarUnit,
    Dimension,
    WindowKind,
    decode,
    encode,
    state_key,
    subject_key,
)
from tollgate.errors import SettingsError
from tollgate.ids import uuid7

ACME = {Dimension.TENANT: "acme"}


def rolling(size_s: int) -> BudgetWindow:
    return BudgetWindow(kind=WindowKind.ROLLING, size_s=size_s)


def calendar(unit: str, timezone: str = "UTC") -> BudgetWindow:
    return BudgetWindow(kind=WindowKind.CALENDAR, unit=CalendarUnit(unit), timezone=timezone)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class Usage:
    """Contributions to one subject of one budget, numbered in offset order per partition."""

    def __init__(self, definition: BudgetDefinition) -> None:
        self.definition = definition
        self.offsets: dict[int, int] = defaultdict(int)
        self.subject = subject_key(ACME)

    def at(
        self,
        when: datetime,
        tokens: int = 100,
        usd: str = "0.01",
        partition: int = 0,
        offset: int | None = None,
    ) -> Contribution:
        if offset is None:
            offset = self.offsets[partition]
        self.offsets[partition] = offset + 1
        return Contribution(
            state_key=state_key(self.definition.budget_id, self.subject),
            budget_id=self.definition.budget_id,
            subject=self.subject,
            scope=ACME,
            event_id=uuid7(),
            event_time=when,
            tokens=tokens,
            usd=Decimal(usd),
            source_partition=partition,
            source_offset=offset,
        )


class Subject:
    """A budget subject's state as the stage would keep it, for tests to drive."""

    def __init__(self, **budget: Any) -> None:
        self.definition = make_budget(**budget)
        self.usage = Usage(self.definition)
        self.state: SubjectState | None = None

    def apply(self, contributions: Sequence[Contribution], now: datetime) -> Outcome:
        self.state, outcome = apply(self.state, self.definition, contributions, now)
        return outcome

    def spend(self, when: datetime, now: datetime | None = None, **usage: Any) -> Outcome:
        return self.apply([self.usage.at(when, **usage)], now or when)

    def expire(self, now: datetime) -> bool:
        assert self.state is not None
        self.state, changed = expire(self.state, self.definition, now)
        return changed

    def published(self, now: datetime) -> BudgetState:
        assert self.state is not None
        return to_budget_state(self.state, self.definition, now)


def crossed(outcome: Outcome) -> list[int]:
    return [crossing.threshold_pct for crossing in outcome.crossings]


# Sliding windows


def test_rolling_minute_of_tokens_forgets_events_as_they_age_out() -> None:
    subject = Subject(window=rolling(60), limit_tokens=10_000)
    for second in (0, 20, 40):
        subject.spend(T0 + timedelta(seconds=second), tokens=100)

    def spent(after_s: float) -> int:
        return subject.published(T0 + timedelta(seconds=after_s)).spent_tokens

    assert spent(40) == 300
    assert spent(60.5) == 300  # the bucket of T0 leaves a full window after it closed
    assert spent(61) == 200
    assert spent(81) == 100
    assert spent(101) == 0


def test_rolling_day_of_dollars_sums_to_the_cent_and_decays() -> None:
    subject = Subject(window=rolling(86_400), limit_tokens=None, limit_usd=Decimal("10"))
    for hour in range(24):
        subject.spend(T0 + timedelta(hours=hour), usd="0.10")

    state = subject.published(T0 + timedelta(hours=23))
    later = subject.published(T0 + timedelta(hours=24, minutes=30))  # 1440 s buckets

    assert state.spent_usd == Decimal("2.40")
    assert state.status is BudgetStatus.OK
    assert later.spent_usd == Decimal("2.30")


def test_rolling_window_end_is_when_everything_counted_has_left() -> None:
    subject = Subject(window=rolling(60))
    subject.spend(T0 + timedelta(seconds=10.5))

    state = subject.published(T0 + timedelta(seconds=10.5))

    assert state.window_start == T0 + timedelta(seconds=10.5 - 60)
    assert state.window_end == T0 + timedelta(seconds=71)
    assert subject.published(state.window_end).spent_tokens == 0


# Calendar windows


def test_new_york_day_counts_the_25_hours_of_the_dst_change() -> None:
    subject = Subject(window=calendar("day", "America/New_York"), limit_tokens=10_000)
    now = at("2026-11-02T04:59:00Z")  # 23:59 EST on Sunday, November 1
    subject.apply(
        [
            subject.usage.at(at("2026-11-01T03:59:00Z")),  # Oct 31, 23:59 EDT: before
            subject.usage.at(at("2026-11-01T04:00:00Z")),  # Nov 1, 00:00 EDT
            subject.usage.at(at("2026-11-01T06:30:00Z")),  # 01:30 EST, the repeated hour
            subject.usage.at(at("2026-11-02T04:30:00Z")),  # 23:30 EST
        ],
        now,
    )

    state = subject.published(now)

    assert state.window_start == at("2026-11-01T04:00:00Z")
    assert state.window_end == at("2026-11-02T05:00:00Z")
    assert state.spent_tokens == 300
    assert subject.published(at("2026-11-02T05:00:00Z")).spent_tokens == 0


def test_berlin_month_runs_from_local_midnight_to_local_midnight() -> None:
    subject = Subject(window=calendar("month", "Europe/Berlin"), limit_tokens=10_000)
    subject.spend(at("2026-09-30T22:30:00Z"))  # October 1, 00:30 CEST
    subject.spend(at("2026-10-31T22:30:00Z"))  # October 31, 23:30 CET

    state = subject.published(at("2026-10-31T22:30:00Z"))

    assert state.window_start == at("2026-09-30T22:00:00Z")
    assert state.window_end == at("2026-10-31T23:00:00Z")
    assert state.spent_tokens == 200


def test_calendar_period_that_ends_resets_spend_and_is_republished() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=100)
    subject.spend(at("2026-11-02T23:00:00Z"), tokens=150)
    assert subject.published(at("2026-11-02T23:00:00Z")).status is BudgetStatus.EXCEEDED

    assert subject.expire(at("2026-11-02T23:59:59Z")) is False
    assert subject.expire(at("2026-11-03T00:00:00Z")) is True
    state = subject.published(at("2026-11-03T00:00:00Z"))
    assert (state.status, state.spent_tokens) == (BudgetStatus.OK, 0)
    assert state.window_start == at("2026-11-03T00:00:00Z")


# Late events


def test_late_event_still_inside_the_rolling_window_is_counted() -> None:
    subject = Subject(window=rolling(60))
    now = T0 + timedelta(minutes=5)
    in_window = subject.usage.at(now - timedelta(seconds=30))
    too_old = subject.usage.at(now - timedelta(minutes=2))

    outcome = subject.apply([in_window, too_old], now)

    assert (outcome.applied, outcome.dropped_late) == (1, 1)
    assert subject.published(now).spent_tokens == 100
    assert subject.published(now).as_of_offsets == {0: 2}


def test_late_event_from_the_previous_day_counts_there_during_the_grace() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000)
    subject.spend(at("2026-11-02T10:00:00Z"), tokens=400)
    now = at("2026-11-03T00:10:00Z")

    outcome = subject.spend(at("2026-11-02T23:59:00Z"), now=now, tokens=200)

    assert (outcome.applied, outcome.dropped_late) == (1, 0)
    assert crossed(outcome) == [50]  # 600 of 1000 in the day it belongs to
    assert outcome.crossings[0].window_start == at("2026-11-02T00:00:00Z")
    assert subject.published(now).spent_tokens == 0  # today's spend is untouched


def test_late_event_from_a_closed_period_is_dropped() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000)
    now = at("2026-11-03T02:00:00Z")  # yesterday's grace is over
    subject.spend(now, tokens=100)

    outcome = subject.spend(at("2026-11-02T23:59:00Z"), now=now, tokens=200)

    assert (outcome.applied, outcome.dropped_late) == (0, 1)
    assert subject.state is not None
    assert subject.state.dropped_late == 1
    assert subject.published(now).spent_tokens == 100
    assert subject.published(now).as_of_offsets == {0: 2}


def test_event_stamped_ahead_of_the_worker_clock_counts_from_now() -> None:
    subject = Subject(window=rolling(60))
    subject.spend(T0 + timedelta(minutes=10), now=T0)

    assert subject.published(T0).spent_tokens == 100
    assert subject.published(T0 + timedelta(seconds=61)).spent_tokens == 0
    assert subject.published(T0).as_of_time == T0 + timedelta(minutes=10)


# Exactly once, by watermark


def test_replayed_batch_changes_nothing() -> None:
    subject = Subject(window=rolling(3600))
    batch = [subject.usage.at(T0 + timedelta(seconds=s)) for s in range(10)]
    now = T0 + timedelta(seconds=10)
    subject.apply(batch, now)
    before = subject.state

    outcome = subject.apply(batch, now)

    assert subject.state == before
    assert outcome == Outcome(changed=False, skipped_duplicates=10)


def test_replay_from_the_last_commit_counts_only_what_is_new() -> None:
    subject = Subject(window=rolling(3600))
    events = [subject.usage.at(T0 + timedelta(seconds=s), offset=s) for s in range(15)]
    now = T0 + timedelta(seconds=15)
    subject.apply(events[:10], now)

    outcome = subject.apply(events[5:], now)

    assert (outcome.applied, outcome.skipped_duplicates) == (5, 5)
    assert subject.published(now).spent_tokens == 1500
    assert subject.published(now).as_of_offsets == {0: 15}


def test_watermarks_of_partitions_are_independent() -> None:
    subject = Subject(window=rolling(3600))
    now = T0 + timedelta(seconds=1)
    subject.apply([subject.usage.at(T0, partition=0, offset=10)], now)

    outcome = subject.apply([subject.usage.at(T0, partition=1, offset=3)], now)
    again = subject.apply([subject.usage.at(T0, partition=0, offset=3)], now)

    assert outcome.applied == 1
    assert again.skipped_duplicates == 1
    assert subject.published(now).as_of_offsets == {0: 11, 1: 4}
    assert subject.published(now).spent_tokens == 200


def test_redefined_window_starts_afresh_but_keeps_the_watermarks() -> None:
    subject = Subject(window=rolling(60))
    subject.spend(T0)
    subject.definition = make_budget(window=calendar("day"))

    subject.apply([subject.usage.at(T0, offset=0), subject.usage.at(T0)], T0)

    assert subject.published(T0).spent_tokens == 100
    assert subject.published(T0).as_of_offsets == {0: 2}


# Thresholds


def test_each_threshold_is_crossed_once_even_when_a_batch_jumps_two() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000, thresholds_pct=[50, 80, 100])

    jump = subject.apply([subject.usage.at(T0, tokens=450), subject.usage.at(T0, tokens=400)], T0)
    full = subject.spend(T0, tokens=150)
    more = subject.spend(T0, tokens=500)

    assert crossed(jump) == [50, 80]
    assert jump.crossings[1].spent_tokens == 850
    assert crossed(full) == [100]
    assert crossed(more) == []


def test_thresholds_re_arm_when_the_calendar_period_rolls_over() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000)
    subject.spend(at("2026-11-02T10:00:00Z"), tokens=900)

    next_day = subject.spend(at("2026-11-03T10:00:00Z"), tokens=600)

    assert crossed(next_day) == [50]
    assert next_day.crossings[0].window_start == at("2026-11-03T00:00:00Z")


def test_rolling_threshold_re_arms_once_spend_falls_below_it() -> None:
    subject = Subject(window=rolling(60), limit_tokens=1000)
    first = subject.spend(T0, tokens=600)
    again_above = subject.spend(T0 + timedelta(seconds=30), tokens=100)
    after_decay = subject.spend(T0 + timedelta(seconds=70), tokens=500)

    assert crossed(first) == [50]
    assert crossed(again_above) == []  # 700: still above 50 %, said once
    assert crossed(after_decay) == [50]  # 600: the first 600 left, then 50 % again


def test_status_is_warning_from_the_lowest_threshold_and_exceeded_at_the_limit() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=None, limit_usd=Decimal("1.00"))

    statuses = []
    for usd in ("0.40", "0.15", "0.30", "0.15"):
        subject.spend(T0, usd=usd)
        state = subject.published(T0)
        statuses.append((state.status, state.threshold_pct))

    assert statuses == [
        (BudgetStatus.OK, None),
        (BudgetStatus.WARNING, 50),
        (BudgetStatus.WARNING, 80),
        (BudgetStatus.EXCEEDED, 100),
    ]


# Reset time and what the gateway makes of it


def test_rolling_reset_is_when_enough_old_spend_has_left() -> None:
    subject = Subject(window=rolling(60), limit_tokens=150)
    for second in (0, 10, 20):
        subject.spend(T0 + timedelta(seconds=second), tokens=100)
    now = T0 + timedelta(seconds=20)

    state = subject.published(now)

    # 300 of 150: the first bucket leaving leaves 200, the second leaves 100.
    assert state.status is BudgetStatus.EXCEEDED
    assert state.reset_at == T0 + timedelta(seconds=71)
    assert state.is_blocking(T0 + timedelta(seconds=70))
    assert not state.is_blocking(T0 + timedelta(seconds=71))
    assert subject.published(T0 + timedelta(seconds=71)).spent_tokens == 100


def test_calendar_reset_is_the_end_of_the_period() -> None:
    subject = Subject(window=calendar("week", "Europe/Berlin"), limit_tokens=100)
    subject.spend(at("2026-11-04T12:00:00Z"), tokens=100)

    state = subject.published(at("2026-11-04T12:00:00Z"))

    assert state.reset_at == state.window_end == at("2026-11-08T23:00:00Z")  # Monday 00:00 CET


def test_rolling_budget_that_decays_under_its_limit_flips_back_to_ok_once() -> None:
    subject = Subject(window=rolling(60), limit_tokens=100)
    subject.spend(T0, tokens=100)

    assert subject.expire(T0 + timedelta(seconds=30)) is False
    assert subject.expire(T0 + timedelta(seconds=61)) is True
    assert subject.expire(T0 + timedelta(seconds=62)) is False
    assert subject.published(T0 + timedelta(seconds=62)).status is BudgetStatus.OK


def test_new_limits_are_republished_on_expire() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000)
    subject.spend(T0, tokens=600)
    subject.definition = make_budget(window=calendar("day"), limit_tokens=500)

    assert subject.expire(T0) is True
    assert subject.published(T0).status is BudgetStatus.EXCEEDED


# The published record and the stored state


def test_published_state_satisfies_the_contract() -> None:
    subject = Subject(
        window=calendar("day", "America/New_York"),
        limit_tokens=1000,
        limit_usd=Decimal("0.05"),
        action=BudgetAction.ALERT,
    )
    subject.apply([subject.usage.at(T0, usd="0.03"), subject.usage.at(T0, partition=2)], T0)

    state = subject.published(T0)

    assert decode(encode(state), BudgetState) == state
    assert state.key() == state_key("acme-tpm", "tenant=acme")
    assert (state.status, state.threshold_pct, state.remaining_usd) == (
        BudgetStatus.WARNING,
        80,
        Decimal("0.01"),
    )
    assert state.as_of_time == T0
    assert state.as_of_offsets == {0: 1, 2: 1}
    assert not state.is_blocking(T0)


def test_subject_state_and_contributions_survive_serialization() -> None:
    subject = Subject(window=calendar("day"), limit_tokens=1000)
    contribution = subject.usage.at(T0, tokens=600, usd="0.000345")
    subject.apply([contribution], T0)
    assert subject.state is not None

    assert decode_state(encode_state(subject.state)) == subject.state
    assert decode_contribution(encode_contribution(contribution)) == contribution


def test_state_stays_bounded_over_hours_of_traffic() -> None:
    subject = Subject(window=rolling(60), limit_tokens=10**12)
    for batch in range(100):  # 10,000 events over about three hours
        now = T0 + timedelta(seconds=110 * (batch + 1))
        subject.apply([subject.usage.at(now - timedelta(seconds=1.1 * i)) for i in range(100)], now)
        assert subject.state is not None
        assert len(subject.state.buckets) <= 62

    assert subject.published(now).spent_tokens == 100 * sum(1 for i in range(100) if 1.1 * i < 60)


def test_idle_subject_may_be_deleted_once_all_its_spend_has_left() -> None:
    subject = Subject(window=rolling(60))
    subject.spend(T0)
    assert subject.state is not None

    assert not is_idle(subject.state, subject.definition, T0 + timedelta(seconds=60))
    assert is_idle(subject.state, subject.definition, T0 + timedelta(seconds=61))


def test_priced_event_contributes_to_every_subject_it_falls_under() -> None:
    index = BudgetIndex(
        [
            make_budget(budget_id="acme", scope={Dimension.TENANT: "acme"}),
            make_budget(budget_id="teams", scope={Dimension.TENANT: "acme", Dimension.TEAM: EACH}),
        ]
    )
    event = make_priced(input_tokens=1000, output_tokens=200, cache_read_input_tokens=0)

    contributions = contributions_for(event, index, partition=1, offset=42)

    assert sorted(c.state_key for c in contributions) == [
        "acme|tenant=acme",
        "teams|tenant=acme,team=search",
    ]
    assert {(c.tokens, c.usd, c.event_time) for c in contributions} == {
        (1200, event.cost_usd, event.end_time)
    }
    assert {(c.source_partition, c.source_offset) for c in contributions} == {(1, 42)}


# Budget index


def usage_dimensions(**values: str | None) -> dict[Dimension, str | None]:
    dimensions: dict[Dimension, str | None] = {
        Dimension.TENANT: "acme",
        Dimension.TEAM: "search",
        Dimension.API_KEY: "key_1",
        Dimension.USER: "ada",
        Dimension.MODEL: "gpt-4o-mini",
        Dimension.PROVIDER: "openai",
    }
    dimensions.update({Dimension[name.upper()]: value for name, value in values.items()})
    return dimensions


def matched(index: BudgetIndex, **values: str | None) -> list[tuple[str, str]]:
    return sorted(
        (m.definition.budget_id, m.subject) for m in index.subjects(usage_dimensions(**values))
    )


@pytest.fixture
def index() -> BudgetIndex:
    return BudgetIndex(
        [
            make_budget(budget_id="acme", scope={Dimension.TENANT: "acme"}),
            make_budget(budget_id="teams", scope={Dimension.TENANT: "acme", Dimension.TEAM: EACH}),
            make_budget(budget_id="each-user", scope={Dimension.USER: EACH}),
            make_budget(
                budget_id="acme-gpt4o",
                scope={Dimension.TENANT: "acme", Dimension.MODEL: "gpt-4o"},
            ),
        ]
    )


def test_index_matches_pinned_and_wildcard_scopes(index: BudgetIndex) -> None:
    assert matched(index) == [
        ("acme", "tenant=acme"),
        ("each-user", "user=ada"),
        ("teams", "tenant=acme,team=search"),
    ]
    assert ("acme-gpt4o", "tenant=acme,request_model=gpt-4o") in matched(index, model="gpt-4o")
    assert matched(index, tenant="globex", user="bob") == [("each-user", "user=bob")]


def test_index_ignores_budgets_whose_dimension_the_event_lacks(index: BudgetIndex) -> None:
    assert matched(index, team=None, user=None) == [("acme", "tenant=acme")]


def test_index_takes_new_and_deleted_definitions(index: BudgetIndex) -> None:
    index.apply_definition(make_budget(budget_id="acme", scope={Dimension.TENANT: "globex"}))
    index.apply_definition(make_budget(budget_id="each-user", scope=ACME, deleted=True))

    assert matched(index) == [("teams", "tenant=acme,team=search")]
    assert matched(index, tenant="globex", team=None) == [("acme", "tenant=globex")]
    assert len(index) == 3
    assert "each-user" not in index


def test_subject_values_are_escaped_as_the_contract_spells_them(index: BudgetIndex) -> None:
    assert ("teams", "tenant=acme,team=a%2Cb%3Dc") in matched(index, team="a,b=c")


# Definitions file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_budgets_file_is_read_into_definitions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        budgets:
          - id: acme-tpm
            scope: {tenant: acme}
            window: {rolling: 60}
            limit_tokens: 100000
          - budget_id: acme-daily
            scope: {tenant: acme, key: "*", model: gpt-4o}
            window: {rolling: 24h}
            limit_usd: 0.1
          - id: teams-monthly
            scope: {tenant: acme, team: "*"}
            window: {calendar: month, timezone: Europe/Berlin}
            limit_usd: "250.00"
            action: alert
            thresholds_pct: [80, 100, 150]
            description: Each team's monthly spend
        """,
    )

    tpm, daily, monthly = load_budgets(path)

    assert tpm == make_budget(budget_id="acme-tpm", window=rolling(60), limit_tokens=100_000)
    assert daily.scope == {
        Dimension.TENANT: "acme",
        Dimension.API_KEY: EACH,
        Dimension.MODEL: "gpt-4o",
    }
    assert (daily.window, daily.limit_usd, daily.limit_tokens) == (
        rolling(86_400),
        Decimal("0.1"),
        None,
    )
    assert monthly.window == calendar("month", "Europe/Berlin")
    assert (monthly.limit_usd, monthly.action, monthly.thresholds_pct) == (
        Decimal("250.00"),
        BudgetAction.ALERT,
        [80, 100, 150],
    )


def test_empty_budgets_file_defines_nothing(tmp_path: Path) -> None:
    assert load_budgets(write(tmp_path, "")) == []
    assert load_budgets(write(tmp_path, "budgets: []")) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{id: x, scope: {tenant: a}, window: {rolling: 60}}", "budget 'x': `limit_tokens`"),
        ("{id: x, scope: {org: a}, window: {rolling: 60}, limit_tokens: 1}", "`scope`"),
        ("{id: x, scope: {tenant: a}, window: {rolling: 1w}, limit_tokens: 1}", "`window`"),
        ("{id: x, scope: {tenant: a}, window: {rolling: 0}, limit_tokens: 1}", "`window`"),
        ("{id: x, scope: {tenant: a}, window: {calendar: year}, limit_tokens: 1}", "`window`"),
        (
            "{id: x, scope: {tenant: a}, window: {calendar: day, timezone: Mars/Olympus}, "
            "limit_tokens: 1}",
            "budget 'x': `window` unknown time zone",
        ),
        ("{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_usd: lots}", "`limit_usd`"),
        ("{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_tokens: -5}", "`limit_tokens`"),
        (
            "{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1, action: warn}",
            "`action`",
        ),
        (
            "{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1, "
            "thresholds_pct: [80, 50]}",
            "`thresholds_pct` must be increasing",
        ),
        (
            "{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1, limits: 2}",
            "`limits` is not a budget field; did you mean `limit_usd`?",
        ),
        ("{id: 'bad id', scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1}", "`id`"),
        ("{scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1}", "budget #1: `id`"),
    ],
)
def test_budgets_file_mistakes_name_the_budget_and_field(
    tmp_path: Path, entry: str, message: str
) -> None:
    path = write(tmp_path, f"budgets:\n  - {entry}\n")

    with pytest.raises(SettingsError, match=r"^budgets file .*: budget ") as error:
        load_budgets(path)

    assert message in str(error.value)


def test_budgets_file_refuses_a_repeated_id(tmp_path: Path) -> None:
    entry = "{id: x, scope: {tenant: a}, window: {rolling: 60}, limit_tokens: 1}"
    path = write(tmp_path, f"budgets:\n  - {entry}\n  - {entry}\n")

    with pytest.raises(SettingsError, match="budget 'x': `id` is used by an earlier budget"):
        load_budgets(path)


def test_budgets_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_budgets(write(tmp_path, "budgets: [\n"))
