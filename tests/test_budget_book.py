"""The gateway's budget book: which calls a blocking budget refuses, and local accounting."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.budget_book import (
    FINISHED_TTL_S,
    IN_FLIGHT_RETRY_S,
    NO_BUDGET,
    BudgetBook,
    BudgetHeadroom,
)
from gateway.errors import BudgetExceeded
from tests.factories import T0, make_state
from tollgate.contract import (
    EACH,
    BudgetAction,
    BudgetDefinition,
    BudgetStatus,
    BudgetWindow,
    CalendarUnit,
    Dimension,
    WindowKind,
    subject_key,
)

NOW = T0 + timedelta(minutes=1)
BERLIN = "Europe/Berlin"
MIDNIGHT = T0.replace(hour=0, minute=0) + timedelta(days=1)


def call(**values: str | None) -> dict[Dimension, str | None]:
    """A call's budget dimensions: acme's search team on gpt-4o-mini, unless told."""
    dimensions: dict[Dimension, str | None] = {
        Dimension.TENANT: "acme",
        Dimension.TEAM: "search",
        Dimension.API_KEY: "key_1a2b3c",
        Dimension.USER: "ada",
        Dimension.MODEL: "gpt-4o-mini",
        Dimension.PROVIDER: "openai",
    }
    dimensions.update({Dimension[name.upper()]: value for name, value in values.items()})
    return dimensions


def book_with(*states: Any, fail_open: bool = True) -> BudgetBook:
    book = BudgetBook(fail_open=fail_open)
    for state in states:
        book.apply(state)
    book.mark_caught_up()
    return book


def spent_state(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "budget_id": "acme-daily",
        "status": BudgetStatus.EXCEEDED,
        "spent_tokens": 1_000_000,
        "limit_tokens": 1_000_000,
        "limit_usd": None,
        "reset_at": MIDNIGHT,
    }
    fields.update(overrides)
    return make_state(**fields)


def token_state(**overrides: Any) -> Any:
    """acme-tokens: 900 of 1,000 tokens spent, as of T0."""
    fields: dict[str, Any] = {
        "budget_id": "acme-tokens",
        "spent_tokens": 900,
        "limit_tokens": 1000,
        "limit_usd": None,
    }
    fields.update(overrides)
    return make_state(**fields)


def admit(book: BudgetBook, tokens: int = 10, now: Any = NOW, **values: str | None) -> Any:
    return book.admit(call(**values), tokens, Decimal(0), now)


# -- what applies ----------------------------------------------------------------------------


def test_call_without_any_budget_is_admitted_with_no_headroom() -> None:
    reservation, headroom = admit(book_with())

    assert headroom == NO_BUDGET == BudgetHeadroom()
    reservation.finish(10, Decimal(0), NOW)  # a no-op, and harmless


def test_spent_blocking_budget_refuses_with_retry_after_and_budget_named() -> None:
    book = book_with(spent_state())

    with pytest.raises(BudgetExceeded) as refused:
        admit(book)

    assert refused.value.budget_id == "acme-daily"
    assert refused.value.retry_after_s == (MIDNIGHT - NOW).total_seconds()
    assert refused.value.message == (
        "budget 'acme-daily' for tenant=acme is spent (1,000,000 of 1,000,000 tokens); "
        "it resets at 2026-11-03T00:00:00Z"
    )
    assert refused.value.headers() == {"retry-after": str(int((MIDNIGHT - NOW).total_seconds()))}


def test_spent_dollar_budget_names_dollars() -> None:
    state = spent_state(
        limit_tokens=None, spent_tokens=5, spent_usd=Decimal("10.00"), limit_usd=Decimal(10)
    )

    with pytest.raises(BudgetExceeded, match=r"is spent \(\$10.00 of \$10.00\)"):
        admit(book_with(state))


def test_alert_only_budget_never_blocks() -> None:
    book = book_with(spent_state(action=BudgetAction.ALERT))

    _, headroom = admit(book)

    assert headroom == NO_BUDGET


def test_each_scope_applies_to_its_own_subject_only() -> None:
    scope = {Dimension.TENANT: "acme", Dimension.TEAM: EACH}
    book = book_with(spent_state(scope=scope, subject="tenant=acme,team=search"))

    with pytest.raises(BudgetExceeded, match="for tenant=acme,team=search"):
        admit(book, team="search")
    admit(book, team="ads")
    admit(book, team=None)
    admit(book, tenant="globex", team="search")


def test_pinned_multi_dimension_scope_applies_to_that_combination() -> None:
    scope = {Dimension.MODEL: "gpt-4o", Dimension.TENANT: "acme"}
    book = book_with(spent_state(scope=scope))

    with pytest.raises(BudgetExceeded):
        admit(book, model="gpt-4o")
    admit(book, model="gpt-4o-mini")


def test_state_of_another_tenant_does_not_apply() -> None:
    book = book_with(spent_state(scope={Dimension.TENANT: "globex"}))

    _, headroom = admit(book)

    assert headroom == NO_BUDGET


def test_values_that_need_escaping_match_the_contract_subject_key() -> None:
    scope = {Dimension.TENANT: "acme", Dimension.USER: EACH}
    subject = subject_key({Dimension.TENANT: "acme", Dimension.USER: "a,b=c d/é"})
    book = book_with(spent_state(scope=scope, subject=subject))

    with pytest.raises(BudgetExceeded):
        admit(book, user="a,b=c d/é")
    admit(book, user="a")


def test_newer_state_replaces_older_one() -> None:
    book = book_with(spent_state())

    book.apply(spent_state(status=BudgetStatus.OK, spent_tokens=10, reset_at=None))

    admit(book)
    assert len(book) == 1


def test_tombstone_removes_the_state() -> None:
    state = spent_state()
    book = book_with(state)

    book.remove(state.key())

    assert state.key() not in book
    assert admit(book)[1] == NO_BUDGET
    book.remove(state.key())  # an unknown key is fine


# -- time ------------------------------------------------------------------------------------


def test_state_of_an_ended_window_does_not_block() -> None:
    book = book_with(spent_state(reset_at=None))

    admit(book, now=MIDNIGHT)


def test_state_past_its_reset_time_does_not_block() -> None:
    book = book_with(spent_state(reset_at=NOW + timedelta(seconds=30)))

    with pytest.raises(BudgetExceeded) as refused:
        admit(book)
    assert refused.value.retry_after_s == 30
    admit(book, now=NOW + timedelta(seconds=30))


def test_retry_after_is_at_least_one_second() -> None:
    book = book_with(spent_state(reset_at=NOW + timedelta(milliseconds=10)))

    with pytest.raises(BudgetExceeded) as refused:
        admit(book)

    assert refused.value.retry_after_s == 1


# -- local accounting ------------------------------------------------------------------------


def test_calls_in_flight_count_against_the_budget() -> None:
    book = book_with(token_state())

    admit(book, tokens=60)
    with pytest.raises(BudgetExceeded) as refused:
        admit(book, tokens=60)

    assert refused.value.budget_id == "acme-tokens"
    assert refused.value.retry_after_s == IN_FLIGHT_RETRY_S
    assert "40 of 1,000 tokens left with calls in flight" in refused.value.message


def test_call_larger_than_what_is_left_is_refused_until_the_window_resets() -> None:
    book = book_with(token_state())

    with pytest.raises(BudgetExceeded) as refused:
        admit(book, tokens=101)

    assert refused.value.retry_after_s == (MIDNIGHT - NOW).total_seconds()
    assert "has 100 of 1,000 tokens left, not enough for this call" in refused.value.message


def test_budget_at_its_limit_is_spent_even_before_the_stream_says_so() -> None:
    book = book_with(token_state(spent_tokens=1000))

    with pytest.raises(BudgetExceeded, match=r"is spent \(1,000 of 1,000 tokens\)"):
        admit(book, tokens=0)


def test_cancelled_call_releases_its_reservation() -> None:
    book = book_with(token_state())
    reservation, _ = admit(book, tokens=60)

    reservation.cancel()

    admit(book, tokens=60)


def test_finished_call_counts_until_a_state_covers_it() -> None:
    book = book_with(token_state())
    reservation, _ = admit(book, tokens=60)
    end = NOW + timedelta(seconds=1)

    reservation.finish(80, Decimal(0), end)
    with pytest.raises(BudgetExceeded, match="20 of 1,000 tokens left"):
        admit(book, tokens=30)
    book.apply(token_state(as_of_time=end - timedelta(milliseconds=1)))
    with pytest.raises(BudgetExceeded):
        admit(book, tokens=30)

    book.apply(token_state(as_of_time=end))  # the stream has it, spent unchanged
    admit(book, tokens=30)


def test_finish_and_cancel_release_once() -> None:
    book = book_with(token_state())
    reservation, _ = admit(book, tokens=60)

    reservation.cancel()
    reservation.cancel()
    reservation.finish(60, Decimal(0), NOW)

    admit(book, tokens=100)


def test_call_the_state_already_covers_does_not_count_again() -> None:
    book = book_with(token_state(as_of_time=NOW + timedelta(seconds=5)))
    reservation, _ = admit(book, tokens=60)

    reservation.finish(60, Decimal(0), NOW + timedelta(seconds=1))

    admit(book, tokens=100)


def test_finished_call_stops_counting_after_the_ttl_without_a_state() -> None:
    book = book_with(token_state())
    reservation, _ = admit(book, tokens=60)
    reservation.finish(80, Decimal(0), NOW)

    with pytest.raises(BudgetExceeded):
        admit(book, tokens=30, now=NOW + timedelta(seconds=FINISHED_TTL_S - 1))

    admit(book, tokens=30, now=NOW + timedelta(seconds=FINISHED_TTL_S))


def test_local_usage_counts_after_the_window_ended() -> None:
    book = book_with(token_state(spent_tokens=999, reset_at=None))
    later = MIDNIGHT + timedelta(seconds=1)

    admit(book, tokens=990, now=later)
    with pytest.raises(BudgetExceeded):
        admit(book, tokens=20, now=later)


# -- start-up --------------------------------------------------------------------------------


def test_fail_closed_book_refuses_until_caught_up() -> None:
    book = BudgetBook(fail_open=False)

    with pytest.raises(BudgetExceeded) as refused:
        admit(book)
    assert refused.value.budget_id == "unknown"
    assert refused.value.retry_after_s == 5
    assert "fail closed" in refused.value.message

    book.mark_caught_up()
    admit(book)


def test_fail_open_book_admits_before_caught_up() -> None:
    book = BudgetBook(fail_open=True)

    assert not book.caught_up
    assert admit(book)[1] == NO_BUDGET


# -- headroom --------------------------------------------------------------------------------


def test_headroom_is_the_tightest_budget_after_local_usage() -> None:
    roomy = make_state(budget_id="acme-month", spent_tokens=100, limit_tokens=10_000)
    tight = token_state(scope={Dimension.TENANT: "acme", Dimension.TEAM: "search"})
    book = book_with(roomy, tight)

    _, headroom = admit(book, tokens=50)

    assert headroom == BudgetHeadroom(
        remaining_tokens=50, remaining_usd=None, reset_at=MIDNIGHT, budget_id="acme-tokens"
    )


def test_headroom_of_a_dollar_budget() -> None:
    book = book_with(make_state())

    _, headroom = book.admit(call(), 10, Decimal("0.80"), NOW)

    assert headroom.remaining_usd == Decimal("5.00")
    assert headroom.remaining_tokens is None
    assert headroom.budget_id == "acme-daily-usd"


# -- from the definition alone ---------------------------------------------------------------


def defined(**overrides: Any) -> BudgetBook:
    """A book that knows acme's budget only from its definition: no state at all."""
    fields: dict[str, Any] = {
        "budget_id": "acme-day",
        "scope": {Dimension.TENANT: "acme"},
        "window": BudgetWindow(kind=WindowKind.CALENDAR, unit=CalendarUnit.DAY, timezone=BERLIN),
        "limit_tokens": 1_000,
    }
    fields.update(overrides)
    book = BudgetBook(fail_open=True, definitions=[BudgetDefinition(**fields)])
    book.mark_caught_up()
    return book


def test_a_budget_binds_from_its_definition_before_any_state() -> None:
    book = defined()

    admit(book, tokens=600)  # in flight: holds 600 of 1,000
    with pytest.raises(BudgetExceeded) as refused:
        admit(book, tokens=600)

    assert refused.value.budget_id == "acme-day"
    assert refused.value.retry_after_s == IN_FLIGHT_RETRY_S
    admit(book, tokens=400)


def test_a_defined_budget_resets_when_the_streams_window_would() -> None:
    book = defined()

    with pytest.raises(BudgetExceeded) as refused:
        admit(book, tokens=1_001)

    berlin_midnight = (NOW.astimezone(ZoneInfo(BERLIN)) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert refused.value.retry_after_s == (berlin_midnight - NOW).total_seconds()


def test_an_alert_only_definition_never_reserves() -> None:
    book = defined(action=BudgetAction.ALERT)

    reservation, headroom = admit(book, tokens=5_000)

    assert not reservation.holds_budgets
    assert headroom == NO_BUDGET
