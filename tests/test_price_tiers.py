"""Long-context tiers, cache-write durations and the fallback's alarm: the catalog's finer
points, in YAML, in LiteLLM's map and on the wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from tests.factories import make_usage
from tollgate.contract import PricedEvent, UsageEvent, decode, encode
from tollgate.errors import ContractError, SettingsError
from tollgate.pricing import load_catalog, read_catalog_yaml

AT = datetime(2026, 3, 1, 12, tzinfo=UTC)

TIERED = """
prices:
  - provider: anthropic
    model: big-context
    effective_from: 2025-01-01
    input: 3
    output: 15
    cache_read: 0.30
    cache_creation: 3.75
    cache_creation_1h: 6
    tiers:
      - above_input_tokens: 200000
        input: 6
        output: 22.50
"""


def sonnet_call(**tokens: int) -> UsageEvent:
    fields = {"cache_read_input_tokens": 0, **tokens}
    return make_usage(
        provider="anthropic",
        operation="messages",
        request_model="big-context",
        response_model="big-context",
        time=AT,
        **fields,
    )


def test_a_call_above_the_threshold_is_priced_wholly_at_the_tier() -> None:
    catalog = read_catalog_yaml(TIERED)

    at_threshold = catalog.price(sonnet_call(input_tokens=200_000, output_tokens=1_000))
    above = catalog.price(sonnet_call(input_tokens=200_001, output_tokens=1_000))

    assert at_threshold.cost_usd == Decimal("0.615")  # 0.2 x 3 + 0.001 x 15
    assert above.cost_usd == Decimal("1.2225060")  # 200,001 x 6 / 1M + 0.001 x 22.50


def test_a_tier_keeps_the_base_rates_it_does_not_name() -> None:
    catalog = read_catalog_yaml(TIERED)

    priced = catalog.price(
        sonnet_call(input_tokens=300_000, cache_read_input_tokens=100_000, output_tokens=0)
    )

    assert priced.cache_read_cost_usd == Decimal("0.03")  # 100,000 x 0.30 / 1M
    assert priced.input_cost_usd == Decimal("1.2")  # 200,000 x 6 / 1M


def test_one_hour_cache_writes_are_priced_apart_from_five_minute_ones() -> None:
    catalog = read_catalog_yaml(TIERED)

    priced = catalog.price(
        sonnet_call(
            input_tokens=10_000,
            cache_creation_input_tokens=4_000,
            cache_creation_1h_input_tokens=1_000,
            output_tokens=0,
        )
    )

    # 3,000 x 3.75 + 1,000 x 6, per million
    assert priced.cache_creation_cost_usd == Decimal("0.01725")


def test_one_hour_writes_cannot_exceed_the_cache_writes_they_are_part_of() -> None:
    with pytest.raises(ContractError, match="cache_creation_1h_input_tokens"):
        sonnet_call(
            input_tokens=100, cache_creation_input_tokens=5, cache_creation_1h_input_tokens=6
        )


def test_records_written_before_the_new_fields_still_decode() -> None:
    event = make_usage()
    wire = json.loads(encode(event))
    del wire["cache_creation_1h_input_tokens"]
    priced = load_catalog().price(event)
    priced_wire = json.loads(encode(priced))
    for field in ("cache_creation_1h_input_tokens", "list_cost_usd", "contract_version"):
        del priced_wire[field]

    old_usage = decode(json.dumps(wire), UsageEvent)
    old_priced = decode(json.dumps(priced_wire), PricedEvent)

    assert old_usage.cache_creation_1h_input_tokens == 0
    assert (old_priced.list_cost_usd, old_priced.contract_version) == (None, None)
    assert old_priced.cost_usd == priced.cost_usd


def test_rising_tier_thresholds_are_required() -> None:
    bad = TIERED.replace(
        "      - above_input_tokens: 200000\n",
        "      - above_input_tokens: 200000\n        input: 1\n      - above_input_tokens: 100\n",
    )
    with pytest.raises(SettingsError, match="thresholds must rise"):
        read_catalog_yaml(bad)


def test_litellm_long_context_and_one_hour_rates_are_imported(tmp_path: Path) -> None:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(
        json.dumps(
            {
                "claude-sonnet-4-5": {
                    "input_cost_per_token": 3e-06,
                    "output_cost_per_token": 1.5e-05,
                    "cache_read_input_token_cost": 3e-07,
                    "cache_creation_input_token_cost": 3.75e-06,
                    "cache_creation_input_token_cost_above_1hr": 6e-06,
                    "input_cost_per_token_above_200k_tokens": 6e-06,
                    "output_cost_per_token_above_200k_tokens": 2.25e-05,
                    "cache_read_input_token_cost_above_200k_tokens": 6e-07,
                    "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
                    "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-05,
                    "litellm_provider": "anthropic",
                    "mode": "chat",
                }
            }
        )
    )
    price = load_catalog(path).lookup("anthropic", "claude-sonnet-4-5", AT).price

    assert price is not None
    assert price.cache_creation_1h == Decimal(6)
    (tier,) = price.tiers
    assert tier.above_input_tokens == 200_000
    listed = (tier.input, tier.output, tier.cache_read, tier.cache_creation, tier.cache_creation_1h)
    assert listed == (Decimal(6), Decimal("22.5"), Decimal("0.6"), Decimal("7.5"), Decimal(12))


def test_a_model_priced_at_the_fallback_raises_one_alert_per_tenant_and_model() -> None:
    from stream.unpriced import UnpricedModels

    catalog = load_catalog()
    calls = [
        catalog.price(make_usage(request_model="mystery-1", response_model=None, time=AT))
        for _ in range(3)
    ]
    calls.append(catalog.price(make_usage(time=AT)))  # a known model: no alert
    watch = UnpricedModels()

    first = watch.observe(calls)
    again = watch.observe(calls)
    restarted = UnpricedModels().observe(calls)

    (alert,) = first
    assert alert.kind.value == "unpriced_model"
    assert "mystery-1" in alert.summary
    assert alert.subject == "tenant=acme,request_model=mystery-1"
    assert again == []
    assert [a.alert_id for a in restarted] == [alert.alert_id]  # same id: receivers dedupe
