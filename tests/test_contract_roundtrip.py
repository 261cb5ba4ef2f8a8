"""Every record survives encode → decode unchanged, for any valid content."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.factories import make_alert, make_budget, make_priced, make_state, make_usage
from tollgate.contract import (
    Alert,
    BudgetDefinition,
    BudgetState,
    Operation,
    PricedEvent,
    Status,
    UsageEvent,
    UsageSource,
    decode,
    encode,
)
from tollgate.contract.usage import REJECTED_STATUSES
from tollgate.ids import uuid7

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
token_counts = st.integers(min_value=0, max_value=10**9)
money = st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False)


@st.composite
def usage_events(draw: st.DrawFn) -> UsageEvent:
    status = draw(st.sampled_from(list(Status)))
    start = draw(instants)
    if status in REJECTED_STATUSES:
        input_tokens = output_tokens = cache_read = cache_write = reasoning = 0
    else:
        input_tokens = draw(token_counts)
        cache_read = draw(st.integers(0, input_tokens))
        cache_write = draw(st.integers(0, input_tokens - cache_read))
        output_tokens = draw(token_counts)
        reasoning = draw(st.integers(0, output_tokens))
    return UsageEvent(
        event_id=uuid7(),
        time=start,
        end_time=start + draw(st.timedeltas(timedelta(0), timedelta(hours=1))),
        tenant=draw(st.none() if status is Status.REJECTED_AUTH else names),
        team=draw(st.none() | names),
        api_key_id=draw(st.none() | names),
        user=draw(st.none() | names),
        tags=draw(st.dictionaries(names, st.text(max_size=20), max_size=4)),
        provider=draw(st.sampled_from(["openai", "anthropic", "azure.ai.openai", "vllm"])),
        operation=draw(st.sampled_from(list(Operation))),
        request_model=draw(st.none() | names),
        response_model=draw(st.none() | names),
        backend=draw(st.none() | names),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
        reasoning_tokens=reasoning,
        usage_source=draw(st.sampled_from(list(UsageSource))),
        status=status,
        http_status=draw(st.integers(100, 599)),
        duration_ms=draw(st.floats(0, 1e7, allow_nan=False)),
        ttft_ms=draw(st.none() | st.floats(0, 1e7, allow_nan=False)),
        streamed=draw(st.booleans()),
    )


@given(usage_events())
def test_any_valid_usage_event_round_trips(event: UsageEvent) -> None:
    assert decode(encode(event), UsageEvent) == event


@given(usage_events(), money, money, money, money, money)
def test_any_valid_priced_event_round_trips_with_exact_money(
    event: UsageEvent, a: Decimal, b: Decimal, c: Decimal, d: Decimal, e: Decimal
) -> None:
    priced = PricedEvent.from_usage(
        event,
        input_cost_usd=a,
        cache_read_cost_usd=b,
        cache_creation_cost_usd=c,
        output_cost_usd=d,
        request_cost_usd=e,
        price_version="v1",
    )
    decoded = decode(encode(priced), PricedEvent)
    assert decoded == priced
    assert decoded.cost_usd == a + b + c + d + e


def test_money_travels_as_decimal_strings_so_no_float_rounding_creeps_in() -> None:
    priced = make_priced(input_cost_usd=Decimal("0.1"), output_cost_usd=Decimal("0.2"))
    wire = json.loads(encode(priced))
    assert wire["cost_usd"] == str(priced.cost_usd)
    assert decode(encode(priced), PricedEvent).cost_usd == Decimal("0.1") + Decimal(
        "0.000015"
    ) + Decimal("0.2")


def test_every_record_kind_writes_its_schema_version_and_round_trips() -> None:
    for record, kind in [
        (make_usage(), UsageEvent),
        (make_priced(), PricedEvent),
        (make_budget(), BudgetDefinition),
        (make_state(), BudgetState),
        (make_alert(), Alert),
    ]:
        wire = encode(record)
        assert json.loads(wire)["schema_version"] == kind.schema_version()
        assert decode(wire, kind) == record


def test_usage_events_never_carry_prompt_or_completion_text() -> None:
    fields = set(UsageEvent.__struct_fields__) | set(PricedEvent.__struct_fields__)
    assert not fields & {"prompt", "messages", "input", "completion", "content", "choices"}
