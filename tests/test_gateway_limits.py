"""Limits at the door: calls per period per key, and budgets from the stream's state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import anthropic
import openai
import pytest

from tests.factories import make_state
from tests.gateway_world import ACME_KEY, GLOBEX_KEY, LIMITED_KEY, GatewayWorld, wait_until
from tollgate.contract import BudgetAction, BudgetStatus, Dimension, Status, subject_key

MESSAGES = [{"role": "user", "content": "hi"}]


def client(gateway: GatewayWorld, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def call(gateway: GatewayWorld, key: str = ACME_KEY):  # type: ignore[no-untyped-def]
    return client(gateway, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
    )


def refused(gateway: GatewayWorld, key: str = ACME_KEY) -> bool:
    try:
        call(gateway, key)
    except openai.RateLimitError:
        return True
    return False


def claude_refused(gateway: GatewayWorld) -> bool:
    """Whether globex's next Anthropic call is refused for a limit."""
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=GLOBEX_KEY, max_retries=0)
    try:
        claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=MESSAGES)
    except anthropic.RateLimitError:
        return True
    return False


# -- calls per period -----------------------------------------------------------------------


def test_a_key_gets_its_calls_per_period_then_a_429_with_retry_after(
    gateway: GatewayWorld,
) -> None:
    remaining = [call(gateway, LIMITED_KEY).headers for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in remaining] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in remaining)
    assert 0 < float(remaining[0]["x-ratelimit-reset-requests"].rstrip("s")) <= 60

    with pytest.raises(openai.RateLimitError) as raised:
        call(gateway, LIMITED_KEY)
    assert raised.value.code == "rate_limit_exceeded"
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.tenant) == (
        Status.REJECTED_RATE_LIMIT,
        429,
        "initech",
    )
    # Other keys have their own limits (here: none).
    assert call(gateway, ACME_KEY).http_response.status_code == 200


# -- budgets ----------------------------------------------------------------------------------


def spent(budget_id: str, scope: dict[Dimension, str], **overrides: object):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "budget_id": budget_id,
        "scope": scope,
        "subject": subject_key(scope),
        "status": BudgetStatus.EXCEEDED,
        "spent_tokens": 5_000,
        "limit_tokens": 5_000,
        "spent_usd": Decimal("2.50"),
        "limit_usd": None,
        "window_start": now - timedelta(minutes=30),
        "window_end": now + timedelta(minutes=30),
        "reset_at": now + timedelta(minutes=30),
        "as_of_time": now,
    }
    fields.update(overrides)
    return make_state(**fields)


def test_a_spent_budget_refuses_its_subject_with_a_429_naming_it(gateway: GatewayWorld) -> None:
    gateway.publish_state(spent("acme-hourly", {Dimension.TENANT: "acme"}))
    assert wait_until(lambda: refused(gateway, ACME_KEY))

    with pytest.raises(openai.RateLimitError) as raised:
        call(gateway, ACME_KEY)
    error = raised.value
    assert error.code == "budget_exceeded"
    assert "acme-hourly" in error.message
    assert 1790 <= int(error.response.headers["retry-after"]) <= 1800
    # The token headers of an admitted call, at zero, as the gateway's own 429 carries them.
    assert error.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 1790 <= float(error.response.headers["x-ratelimit-reset-tokens"].rstrip("s")) <= 1800
    assert error.response.headers["x-tollgate-budget"] == "acme-hourly"
    event = gateway.event_for(error.response.headers["x-tollgate-request-id"])
    assert (event.status, event.tenant, event.input_tokens) == (Status.REJECTED_BUDGET, "acme", 0)

    # Another tenant's calls are not under acme's budget.
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=GLOBEX_KEY, max_retries=0)
    assert claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=MESSAGES)


def test_anthropic_callers_get_the_refusal_in_anthropics_format(gateway: GatewayWorld) -> None:
    gateway.publish_state(spent("claude-cap", {Dimension.MODEL: "claude-sonnet-4"}))
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=GLOBEX_KEY, max_retries=0)
    assert wait_until(lambda: claude_refused(gateway))
    with pytest.raises(anthropic.RateLimitError) as raised:
        claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "claude-cap" in raised.value.message


def test_a_budget_back_under_its_limit_admits_again(gateway: GatewayWorld) -> None:
    scope = {Dimension.TENANT: "acme", Dimension.TEAM: "search"}
    gateway.publish_state(spent("search-tokens", scope))
    assert wait_until(lambda: refused(gateway, ACME_KEY))
    gateway.publish_state(
        spent("search-tokens", scope, status=BudgetStatus.OK, spent_tokens=1_000, reset_at=None)
    )
    assert wait_until(lambda: not refused(gateway, ACME_KEY))


def test_an_alert_only_budget_never_refuses(gateway: GatewayWorld) -> None:
    gateway.publish_state(
        spent("acme-watch", {Dimension.TENANT: "acme"}, action=BudgetAction.ALERT)
    )
    gateway.publish_state(spent("globex-cap", {Dimension.TENANT: "globex"}))
    assert wait_until(lambda: claude_refused(gateway))  # the feed has read both states by now
    assert call(gateway, ACME_KEY).http_response.status_code == 200


def test_the_remaining_budget_is_in_the_headers_and_falls_with_local_usage(
    gateway: GatewayWorld,
) -> None:
    scope = {Dimension.TENANT: "acme"}
    gateway.publish_state(
        spent("acme-tokens", scope, status=BudgetStatus.OK, spent_tokens=0, limit_tokens=10_000)
    )
    assert wait_until(lambda: "x-ratelimit-remaining-tokens" in call(gateway).headers)
    first = call(gateway).headers
    second = call(gateway).headers
    used = int(first["x-token-used"])
    assert first["x-tollgate-budget"] == "acme-tokens"
    # The stream has not counted these calls yet; the gateway counts them itself.
    assert int(second["x-ratelimit-remaining-tokens"]) <= (
        int(first["x-ratelimit-remaining-tokens"]) - used
    )
    assert 0 < float(first["x-ratelimit-reset-tokens"].rstrip("s")) <= 1800


def test_a_burst_cannot_overshoot_a_budget_the_stream_has_not_caught_up_with(
    gateway: GatewayWorld,
) -> None:
    """Local accounting: calls already made count before the stream's state says so."""
    scope = {Dimension.TENANT: "acme"}
    first = call(gateway)
    per_call = int(first.headers["x-token-used"])
    gateway.publish_state(
        spent(
            "acme-small",
            scope,
            status=BudgetStatus.OK,
            spent_tokens=0,
            limit_tokens=per_call * 5,
            reset_at=None,
        )
    )
    assert wait_until(lambda: "x-tollgate-budget" in call(gateway).headers)
    outcomes = [not refused(gateway) for _ in range(10)]
    # Five calls fit; the one that showed the budget in its headers was the first of them.
    assert sum(outcomes) <= 4
    assert outcomes == sorted(outcomes, reverse=True)
    assert not outcomes[-1]


def test_a_dollar_budget_stops_a_burst_before_the_stream_has_counted_it(
    gateway: GatewayWorld,
) -> None:
    """The gateway prices its own calls (the shared catalog) against dollar budgets."""
    scope = {Dimension.TENANT: "acme"}
    gateway.publish_state(
        spent(
            "acme-cents",
            scope,
            status=BudgetStatus.OK,
            spent_tokens=0,
            limit_tokens=None,
            spent_usd=Decimal(0),
            limit_usd=Decimal("0.0001"),
            reset_at=None,
        )
    )
    assert wait_until(lambda: "x-tollgate-budget" in call(gateway).headers)
    # gpt-4o-mini at $0.15/$0.60 per million: a call here (1 token in, 16 out) costs about
    # $0.00001, so ten fit, the one that showed the budget included.
    outcomes = [not refused(gateway) for _ in range(14)]
    assert not outcomes[-1]
    assert 5 <= sum(outcomes) <= 10
    assert outcomes == sorted(outcomes, reverse=True)
