"""A malformed record is refused with an error that names the field at fault."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.factories import make_alert, make_budget, make_priced, make_state, make_usage
from tollgate.contract import (
    Alert,
    BudgetDefinition,
    BudgetState,
    PricedEvent,
    UsageEvent,
    decode,
    encode,
)
from tollgate.errors import ContractError


def wire(record: Any, **changes: Any) -> bytes:
    payload = json.loads(encode(record))
    for name, value in changes.items():
        if value is ...:
            del payload[name]
        else:
            payload[name] = value
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"input_tokens": -1}, "input_tokens", ">= 0"),
        ({"output_tokens": "12"}, "output_tokens", "Expected `int`"),
        ({"event_id": "not-a-uuid"}, "event_id", "Invalid UUID"),
        ({"event_id": "9f1c2b9e-3a4d-4b6e-8f00-1234567890ab"}, "event_id", "UUIDv7"),
        ({"time": "2026-11-02T09:30:00"}, "time", "timezone"),
        ({"end_time": "2026-11-02T09:00:00Z"}, "end_time", "before `time`"),
        ({"status": "maybe"}, "status", "Invalid enum value 'maybe'"),
        ({"operation": "images"}, "operation", "Invalid enum value 'images'"),
        ({"usage_source": "guessed"}, "usage_source", "Invalid enum value"),
        ({"http_status": 700}, "http_status", "<= 599"),
        ({"duration_ms": -5}, "duration_ms", ">= 0"),
        ({"tenant": ""}, "tenant", "length >= 1"),
        ({"tenant": None}, "tenant", "rejected_auth"),
        ({"provider": ...}, "provider", "required field is missing"),
        ({"status": ...}, "status", "required field is missing"),
        ({"prompt": "hello"}, "prompt", "unknown field"),
        ({"tags": {"env": 3}}, "tags[...]", "Expected `str`"),
        (
            {"cache_read_input_tokens": 1100, "cache_creation_input_tokens": 200},
            "cache_read_input_tokens",
            "input_tokens includes cached tokens",
        ),
        ({"reasoning_tokens": 301}, "reasoning_tokens", "output_tokens includes reasoning"),
        ({"status": "rejected_budget", "http_status": 429}, "status", "carry no tokens"),
    ],
)
def test_invalid_usage_event_names_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ContractError) as raised:
        decode(wire(make_usage(), **changes), UsageEvent)
    assert raised.value.field == field
    assert raised.value.record_type == "UsageEvent"
    assert words in str(raised.value)


def test_malformed_json_is_a_contract_error_not_a_crash() -> None:
    with pytest.raises(ContractError, match="malformed JSON"):
        decode(b'{"schema_version": 1, "event_id": ', UsageEvent)


def test_a_json_array_is_refused() -> None:
    with pytest.raises(ContractError, match="Expected `object`"):
        decode(b"[1, 2]", UsageEvent)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"cost_usd": "1.00"}, "cost_usd", "parts add up to"),
        ({"output_cost_usd": "-0.01"}, "output_cost_usd", "non-negative"),
        ({"input_cost_usd": "NaN"}, "input_cost_usd", "finite"),
        ({"input_cost_usd": "lots"}, "input_cost_usd", "Invalid decimal"),
        ({"price_version": ...}, "price_version", "required field is missing"),
    ],
)
def test_invalid_priced_event_names_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ContractError) as raised:
        decode(wire(make_priced(), **changes), PricedEvent)
    assert raised.value.field == field
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"scope": {}}, "scope", "names no dimension"),
        ({"scope": {"planet": "mars"}}, "scope", "Invalid enum value 'planet'"),
        ({"limit_tokens": None}, "limit_tokens", "needs `limit_tokens`, `limit_usd`"),
        ({"limit_tokens": 0}, "limit_tokens", ">= 1"),
        ({"limit_usd": "-5"}, "limit_usd", "non-negative"),
        ({"thresholds_pct": [80, 50]}, "thresholds_pct", "increasing"),
        ({"thresholds_pct": [0]}, "thresholds_pct[0]", ">= 1"),
        ({"budget_id": "no spaces please"}, "budget_id", "matching regex"),
        ({"window": {"kind": "rolling"}}, "window", "rolling window takes `size_s`"),
        ({"window": {"kind": "calendar", "size_s": 60}}, "window", "calendar window takes"),
        (
            {"window": {"kind": "calendar", "unit": "day", "timezone": "Mars/Olympus"}},
            "window",
            "unknown time zone",
        ),
        ({"window": {"kind": "calendar", "unit": "fortnight"}}, "window.unit", "Invalid enum"),
    ],
)
def test_invalid_budget_definition_names_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ContractError) as raised:
        decode(wire(make_budget(), **changes), BudgetDefinition)
    assert raised.value.field == field
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"spent_usd": "-1"}, "spent_usd", "non-negative"),
        ({"status": "fine"}, "status", "Invalid enum"),
        ({"window_end": "2026-11-01T00:00:00Z"}, "window_end", "before `window_start`"),
        ({"as_of_offsets": {"zero": 1}}, "as_of_offsets", "Expected `int`"),
    ],
)
def test_invalid_budget_state_names_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ContractError) as raised:
        decode(wire(make_state(), **changes), BudgetState)
    assert raised.value.field == field
    assert words in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "vibes"}, "kind"),
        ({"summary": ""}, "summary"),
        ({"actual_usd": "-3"}, "actual_usd"),
        ({"alert_id": ...}, "alert_id"),
    ],
)
def test_invalid_alert_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError) as raised:
        decode(wire(make_alert(), **changes), Alert)
    assert raised.value.field == field


def test_building_an_invalid_record_in_code_fails_the_same_way() -> None:
    with pytest.raises(ContractError) as raised:
        make_usage(input_tokens=10, cache_read_input_tokens=20)
    assert raised.value.field == "cache_read_input_tokens"
