"""The price catalog: every usage event leaves the meter priced, exactly, at its day's prices."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.factories import make_usage
from tollgate.contract import PricedEvent, Status, decode, encode
from tollgate.errors import SettingsError
from tollgate.pricing import (
    ModelPrice,
    PriceCatalog,
    litellm_prices,
    load_catalog,
    load_litellm,
    price,
    read_catalog_yaml,
    strip_model_suffix,
)

COST_PARTS = (
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_creation_cost_usd",
    "output_cost_usd",
    "request_cost_usd",
)


@pytest.fixture(scope="module")
def shipped() -> PriceCatalog:
    return load_catalog()


def parts_sum(priced: PricedEvent) -> Decimal:
    return sum((getattr(priced, part) for part in COST_PARTS), Decimal(0))


def priced_call(catalog: PriceCatalog, **usage: object) -> PricedEvent:
    """A call with no tokens unless the test says so, priced by ``catalog``."""
    fields: dict[str, object] = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "response_model": None,
    }
    fields.update(usage)
    return price(make_usage(**fields), catalog)


# --- what each kind of token costs ------------------------------------------------------


def test_cached_and_reasoning_tokens_are_priced_once_each_at_their_own_rate(
    shipped: PriceCatalog,
) -> None:
    # gpt-4o: 2.50 in, 1.25 cached, 10.00 out (reasoning at the output rate).
    priced = priced_call(
        shipped,
        request_model="gpt-4o",
        input_tokens=1000,
        cache_read_input_tokens=400,
        output_tokens=300,
        reasoning_tokens=120,
    )

    assert priced.input_cost_usd == Decimal("0.0015")  # 600 x 2.50 / 1M
    assert priced.cache_read_cost_usd == Decimal("0.0005")  # 400 x 1.25 / 1M
    assert priced.cache_creation_cost_usd == 0
    assert priced.output_cost_usd == Decimal("0.0030")  # 180 x 10 + 120 x 10, / 1M
    assert priced.request_cost_usd == 0
    assert priced.cost_usd == Decimal("0.0050")
    assert priced.price_version == "openai/gpt-4o@2024-08-06"
    assert priced.price_fallback is False


def test_reasoning_tokens_use_the_reasoning_rate_when_one_is_set() -> None:
    catalog = PriceCatalog(
        [
            ModelPrice(
                provider="openai",
                model="thinker",
                effective_from=date(2025, 1, 1),
                input=Decimal(2),
                output=Decimal(8),
                reasoning=Decimal(12),
            )
        ]
    )

    priced = priced_call(
        catalog, request_model="thinker", input_tokens=10, output_tokens=1000, reasoning_tokens=250
    )

    # 750 x 8 / 1M + 250 x 12 / 1M = 0.006 + 0.003
    assert priced.output_cost_usd == Decimal("0.009")
    assert priced.input_cost_usd == Decimal("0.00002")
    assert priced.cost_usd == Decimal("0.00902")


def test_anthropic_cache_reads_and_writes_are_priced_at_their_rates(
    shipped: PriceCatalog,
) -> None:
    # claude-sonnet-4: 3 in, 0.30 cache read, 3.75 cache write, 15 out.
    priced = priced_call(
        shipped,
        provider="anthropic",
        operation="messages",
        request_model="claude-sonnet-4-20250514",
        response_model="claude-sonnet-4-20250514",
        input_tokens=10_000,
        cache_read_input_tokens=6_000,
        cache_creation_input_tokens=2_000,
        output_tokens=500,
    )

    assert priced.input_cost_usd == Decimal("0.006")  # 2,000 x 3 / 1M
    assert priced.cache_read_cost_usd == Decimal("0.0018")  # 6,000 x 0.30 / 1M
    assert priced.cache_creation_cost_usd == Decimal("0.0075")  # 2,000 x 3.75 / 1M
    assert priced.output_cost_usd == Decimal("0.0075")  # 500 x 15 / 1M
    assert priced.cost_usd == Decimal("0.0228")
    assert priced.price_version == "anthropic/claude-sonnet-4@2025-05-14"


def test_the_factory_event_costs_what_its_priced_twin_says(shipped: PriceCatalog) -> None:
    priced = price(make_usage(), shipped)  # gpt-4o-mini, 1,200 in (200 cached), 300 out

    assert priced.input_cost_usd == Decimal("0.00015")
    assert priced.cache_read_cost_usd == Decimal("0.000015")
    assert priced.output_cost_usd == Decimal("0.00018")
    assert priced.cost_usd == Decimal("0.000345")
    assert priced.price_version == "openai/gpt-4o-mini@2024-07-18"


@pytest.fixture
def with_fee() -> PriceCatalog:
    fee = ModelPrice(
        provider="openai",
        model="search-preview",
        effective_from=date(2025, 1, 1),
        input=Decimal(1),
        output=Decimal(2),
        request_usd=Decimal("0.025"),
    )
    return PriceCatalog([fee])


def test_request_fee_is_charged_once_per_call_that_reached_the_model(
    with_fee: PriceCatalog,
) -> None:
    priced = priced_call(with_fee, request_model="search-preview", input_tokens=1000)

    assert priced.request_cost_usd == Decimal("0.025")
    assert priced.cost_usd == Decimal("0.026")  # 1,000 x 1 / 1M + the fee


def test_request_fee_is_charged_for_a_failed_call_that_used_tokens(
    with_fee: PriceCatalog,
) -> None:
    priced = priced_call(
        with_fee,
        request_model="search-preview",
        status=Status.CLIENT_CLOSED,
        http_status=499,
        input_tokens=10,
    )

    assert priced.request_cost_usd == Decimal("0.025")


def test_no_request_fee_when_the_upstream_failed_before_using_tokens(
    with_fee: PriceCatalog,
) -> None:
    priced = priced_call(
        with_fee, request_model="search-preview", status=Status.UPSTREAM_ERROR, http_status=502
    )

    assert priced.cost_usd == 0
    assert priced.price_version == "openai/search-preview@2025-01-01"


def test_rejected_calls_cost_nothing_but_are_still_priced(with_fee: PriceCatalog) -> None:
    priced = priced_call(
        with_fee, request_model="search-preview", status=Status.REJECTED_BUDGET, http_status=429
    )

    assert priced.cost_usd == 0
    assert all(getattr(priced, part) == 0 for part in COST_PARTS)
    assert priced.price_version == "openai/search-preview@2025-01-01"
    assert priced.price_fallback is False


def test_a_call_without_a_model_costs_nothing_and_cites_no_price(shipped: PriceCatalog) -> None:
    priced = priced_call(
        shipped,
        tenant=None,
        request_model=None,
        status=Status.REJECTED_AUTH,
        http_status=401,
    )

    assert priced.cost_usd == 0
    assert priced.price_version == "none"
    assert priced.price_fallback is False


# --- which price applies ------------------------------------------------------------------


@pytest.fixture
def mid_year_change() -> PriceCatalog:
    return read_catalog_yaml(
        """
        prices:
          - {provider: openai, model: gpt-x, effective_from: 2026-01-01, input: 4, output: 16}
          - {provider: openai, model: gpt-x, effective_from: 2026-07-01, input: 2, output: 8}
        fallback: {effective_from: 2020-01-01, input: 100, output: 100}
        """
    )


def test_events_before_and_after_a_price_change_are_priced_at_their_own_day(
    mid_year_change: PriceCatalog,
) -> None:
    before = priced_call(
        mid_year_change,
        request_model="gpt-x",
        time=datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC),
        input_tokens=1_000_000,
    )
    after = priced_call(
        mid_year_change,
        request_model="gpt-x",
        time=datetime(2026, 7, 1, tzinfo=UTC),
        input_tokens=1_000_000,
    )

    assert (before.cost_usd, before.price_version) == (Decimal(4), "openai/gpt-x@2026-01-01")
    assert (after.cost_usd, after.price_version) == (Decimal(2), "openai/gpt-x@2026-07-01")


def test_prices_change_at_midnight_utc_whatever_the_event_time_zone(
    mid_year_change: PriceCatalog,
) -> None:
    paris_summer = timezone(timedelta(hours=2))
    match = mid_year_change.lookup("openai", "gpt-x", datetime(2026, 7, 1, 1, tzinfo=paris_summer))

    assert match.version == "openai/gpt-x@2026-01-01"  # still 30 June in UTC


def test_an_event_before_a_model_was_priced_uses_the_fallback(
    mid_year_change: PriceCatalog,
) -> None:
    match = mid_year_change.lookup("openai", "gpt-x", datetime(2025, 12, 31, tzinfo=UTC))

    assert match.fallback is True
    assert match.version == "fallback@2020-01-01"


def test_the_shipped_o3_price_cut_reprices_history(shipped: PriceCatalog) -> None:
    spring = shipped.lookup("openai", "o3-2025-04-16", datetime(2025, 5, 1, tzinfo=UTC))
    summer = shipped.lookup("openai", "o3-2025-04-16", datetime(2025, 7, 1, tzinfo=UTC))

    assert spring.price is not None
    assert spring.price.input == Decimal(10)
    assert summer.price is not None
    assert summer.price.input == Decimal(2)


@pytest.mark.parametrize(
    ("model", "bare"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-1106", "gpt-3.5-turbo"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4.1-nano", "gpt-4.1-nano"),
        ("o3-mini", "o3-mini"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("claude-3-5-sonnet", "claude-3-5-sonnet"),
        ("qwen-2500", "qwen-2500"),  # not a month and day
    ],
)
def test_only_date_like_suffixes_are_stripped_from_model_ids(model: str, bare: str) -> None:
    assert strip_model_suffix(model) == bare


@pytest.mark.parametrize(
    ("provider", "model", "version"),
    [
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o@2024-08-06"),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini@2024-07-18"),
        ("anthropic", "claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku@2024-10-22"),
        ("anthropic", "claude-haiku-3-5", "anthropic/claude-haiku-3-5@2024-10-22"),
        ("anthropic", "claude-3-7-sonnet-20250219", "anthropic/claude-3-7-sonnet@2025-02-19"),
    ],
)
def test_dated_and_aliased_model_ids_find_their_model(
    shipped: PriceCatalog, provider: str, model: str, version: str
) -> None:
    match = shipped.lookup(provider, model, datetime(2026, 1, 1, tzinfo=UTC))

    assert (match.version, match.fallback) == (version, False)


def test_a_mini_model_never_falls_to_its_bigger_sibling() -> None:
    only_gpt_4o = PriceCatalog(
        [
            ModelPrice(
                provider="openai",
                model="gpt-4o",
                effective_from=date(2024, 1, 1),
                input=2,
                output=8,
            )
        ]
    )

    match = only_gpt_4o.lookup("openai", "gpt-4o-mini", datetime(2026, 1, 1, tzinfo=UTC))

    assert match.fallback is True


def test_azure_openai_is_billed_at_openai_list_prices(shipped: PriceCatalog) -> None:
    priced = priced_call(
        shipped,
        provider="azure.ai.openai",
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        input_tokens=1_000_000,
    )

    assert priced.price_version == "openai/gpt-4o@2024-08-06"
    assert priced.cost_usd == Decimal("2.50")


def test_an_azure_price_in_the_catalog_beats_the_openai_one() -> None:
    start = date(2025, 1, 1)
    catalog = PriceCatalog(
        [
            ModelPrice(provider="openai", model="gpt-4o", effective_from=start, input=2, output=8),
            ModelPrice(
                provider="azure.ai.openai", model="gpt-4o", effective_from=start, input=3, output=9
            ),
        ]
    )

    match = catalog.lookup("azure.ai.openai", "gpt-4o", datetime(2026, 1, 1, tzinfo=UTC))

    assert match.version == "azure.ai.openai/gpt-4o@2025-01-01"


def test_a_price_for_any_provider_matches_every_provider() -> None:
    catalog = PriceCatalog(
        [
            ModelPrice(
                provider=None, model="llama-3", effective_from=date(2025, 1, 1), input=0, output=0
            )
        ]
    )

    match = catalog.lookup("vllm", "llama-3", datetime(2026, 1, 1, tzinfo=UTC))

    assert (match.version, match.fallback) == ("*/llama-3@2025-01-01", False)


def test_the_response_model_is_preferred_when_the_catalog_knows_it(
    shipped: PriceCatalog,
) -> None:
    routed = priced_call(
        shipped, request_model="cheap-alias", response_model="gpt-4o-mini-2024-07-18"
    )
    odd_snapshot = priced_call(shipped, request_model="gpt-4o", response_model="gpt-4o-canary")

    assert routed.price_version == "openai/gpt-4o-mini@2024-07-18"
    assert odd_snapshot.price_version == "openai/gpt-4o@2024-08-06"


def test_an_unknown_model_is_priced_at_the_fallback_and_flagged(shipped: PriceCatalog) -> None:
    priced = priced_call(
        shipped,
        request_model="my-local-llama",
        input_tokens=1200,
        cache_read_input_tokens=200,
        output_tokens=300,
    )

    # Fallback 150 in (cache reads default to it), 600 out.
    assert priced.price_fallback is True
    assert priced.price_version == "fallback@2024-01-01"
    assert priced.input_cost_usd == Decimal("0.15")
    assert priced.cache_read_cost_usd == Decimal("0.03")
    assert priced.output_cost_usd == Decimal("0.18")
    assert priced.cost_usd == Decimal("0.36")


def test_an_unknown_model_without_a_fallback_is_still_priced_and_flagged() -> None:
    priced = priced_call(PriceCatalog([]), request_model="mystery", input_tokens=50)

    assert (priced.cost_usd, priced.price_version, priced.price_fallback) == (0, "none", True)


def test_a_priced_event_survives_the_wire_with_exact_money(shipped: PriceCatalog) -> None:
    priced = price(make_usage(), shipped)

    assert decode(encode(priced), PricedEvent) == priced


# --- the shipped catalog ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "rates"),
    [
        ("openai", "gpt-4o", ("2.50", "10", "1.25")),
        ("openai", "gpt-4o-mini", ("0.15", "0.60", "0.075")),
        ("openai", "gpt-4.1", ("2", "8", "0.50")),
        ("openai", "gpt-4.1-mini", ("0.40", "1.60", "0.10")),
        ("openai", "gpt-4.1-nano", ("0.10", "0.40", "0.025")),
        ("openai", "o1", ("15", "60", "7.5")),
        ("openai", "o3", ("2", "8", "0.5")),
        ("openai", "o3-mini", ("1.10", "4.40", "0.55")),
        ("openai", "o4-mini", ("1.10", "4.40", "0.275")),
        ("openai", "text-embedding-3-small", ("0.02", "0", "0.02")),
        ("openai", "text-embedding-3-large", ("0.13", "0", "0.13")),
        ("anthropic", "claude-opus-4", ("15", "75", "1.50")),
        ("anthropic", "claude-sonnet-4", ("3", "15", "0.30")),
        ("anthropic", "claude-3-7-sonnet", ("3", "15", "0.30")),
        ("anthropic", "claude-3-5-sonnet", ("3", "15", "0.30")),
        ("anthropic", "claude-3-5-haiku", ("0.80", "4", "0.08")),
    ],
)
def test_the_shipped_catalog_lists_public_prices(
    shipped: PriceCatalog, provider: str, model: str, rates: tuple[str, str, str]
) -> None:
    match = shipped.lookup(provider, model, datetime(2026, 1, 1, tzinfo=UTC))

    assert match.price is not None
    assert match.fallback is False
    listed = (match.price.input, match.price.output, match.price.cache_read)
    assert listed == tuple(Decimal(rate) for rate in rates)


def test_the_shipped_catalog_prices_anthropic_cache_writes_at_a_premium(
    shipped: PriceCatalog,
) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    writes = {
        model: shipped.lookup("anthropic", model, at).price.cache_creation  # type: ignore[union-attr]
        for model in ("claude-opus-4", "claude-sonnet-4", "claude-3-5-haiku")
    }

    assert writes == {
        "claude-opus-4": Decimal("18.75"),
        "claude-sonnet-4": Decimal("3.75"),
        "claude-3-5-haiku": Decimal(1),
    }


def test_the_shipped_fallback_is_conservative(shipped: PriceCatalog) -> None:
    """No shipped model, long-context tiers included, costs more per token of any kind
    than the fallback: an unknown model is never under-counted against a budget."""
    fallback = shipped.fallback
    assert fallback is not None
    kinds = ("input", "cache_read", "cache_creation", "cache_creation_1h", "output", "reasoning")
    for entry in shipped.prices:
        for rates in (entry, *entry.tiers):
            for kind in kinds:
                assert getattr(rates, kind) is None or getattr(rates, kind) <= getattr(
                    fallback, kind
                ), f"{entry.label} {kind}"


def test_shipped_prices_are_exact_decimals_not_floats(shipped: PriceCatalog) -> None:
    rates = [rate for entry in shipped.prices for rate in (entry.input, entry.cache_read)]

    assert all(type(rate) is Decimal for rate in rates)
    assert Decimal("0.075") in rates  # would be 0.07499999... through a float


# --- LiteLLM import ----------------------------------------------------------------------


LITELLM_TABLE = {
    "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "litellm_provider": "openai",
        "mode": "chat",
    },
    "o3-mini": {
        "input_cost_per_token": 1.1e-06,
        "output_cost_per_token": 4.4e-06,
        "output_cost_per_reasoning_token": 4.4e-06,
        "litellm_provider": "openai",
        "mode": "chat",
    },
    "azure/gpt-4o-2024-08-06": {
        "input_cost_per_token": 2.75e-06,
        "output_cost_per_token": 1.1e-05,
        "litellm_provider": "azure",
        "mode": "chat",
    },
    "anthropic/claude-3-5-haiku-20241022": {
        "input_cost_per_token": 8e-07,
        "output_cost_per_token": 4e-06,
        "cache_read_input_token_cost": 8e-08,
        "cache_creation_input_token_cost": 1e-06,
        "litellm_provider": "anthropic",
        "mode": "chat",
    },
    "text-embedding-3-small": {
        "input_cost_per_token": 2e-08,
        "litellm_provider": "openai",
        "mode": "embedding",
    },
    "dall-e-3": {
        "input_cost_per_pixel": 3.81e-08,
        "litellm_provider": "openai",
        "mode": "image_generation",
    },
    "gemini-2.0-flash": {
        "input_cost_per_token": 1e-07,
        "output_cost_per_token": 4e-07,
        "litellm_provider": "vertex_ai-language-models",
        "mode": "chat",
    },
}


@pytest.fixture
def litellm_file(tmp_path: Path) -> Path:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(LITELLM_TABLE))
    return path


def test_litellm_prices_load_as_exact_decimals_per_million(litellm_file: Path) -> None:
    catalog = load_catalog(litellm_file)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    gpt_4o = catalog.lookup("openai", "gpt-4o", at).price
    o3_mini = catalog.lookup("openai", "o3-mini", at).price

    assert gpt_4o is not None
    assert o3_mini is not None
    assert (gpt_4o.input, gpt_4o.output, gpt_4o.cache_read) == (
        Decimal("2.5"),
        Decimal(10),
        Decimal("1.25"),
    )
    assert (o3_mini.input, o3_mini.reasoning) == (Decimal("1.1"), Decimal("4.4"))


def test_litellm_provider_prefixes_become_otel_providers(litellm_file: Path) -> None:
    catalog = load_catalog(litellm_file)
    at = datetime(2026, 1, 1, tzinfo=UTC)

    azure = catalog.lookup("azure.ai.openai", "gpt-4o-2024-08-06", at)
    haiku = catalog.lookup("anthropic", "claude-3-5-haiku-20241022", at)
    gemini = catalog.lookup("vertex_ai-language-models", "gemini-2.0-flash", at)

    assert azure.version == "litellm/azure.ai.openai/gpt-4o-2024-08-06@1970-01-01"
    assert haiku.price is not None
    assert haiku.price.cache_creation == Decimal(1)
    assert gemini.fallback is False


def test_litellm_entries_without_token_prices_are_skipped(litellm_file: Path) -> None:
    models = {entry.model for entry in load_catalog(litellm_file).prices}

    assert models == {
        "gpt-4o",
        "o3-mini",
        "gpt-4o-2024-08-06",
        "claude-3-5-haiku-20241022",
        "text-embedding-3-small",
        "gemini-2.0-flash",
    }


def test_a_litellm_catalog_keeps_the_shipped_fallback(litellm_file: Path) -> None:
    match = load_catalog(litellm_file).lookup("openai", "nope", datetime(2026, 1, 1, tzinfo=UTC))

    assert (match.fallback, match.version) == (True, "fallback@2024-01-01")


def test_litellm_prices_take_an_effective_date(litellm_file: Path) -> None:
    catalog = load_litellm(litellm_file, effective_from=date(2026, 3, 1))

    before = catalog.lookup("openai", "gpt-4o", datetime(2026, 2, 28, tzinfo=UTC))
    after = catalog.lookup("openai", "gpt-4o", datetime(2026, 3, 1, tzinfo=UTC))

    assert (before.fallback, before.version) == (True, "none")
    assert after.version == "litellm/openai/gpt-4o@2026-03-01"


def test_litellm_floats_in_memory_convert_through_their_text() -> None:
    (entry,) = litellm_prices(
        {"x": {"input_cost_per_token": 3e-07, "output_cost_per_token": 1.1e-06}}
    )

    assert (entry.input, entry.output) == (Decimal("0.3"), Decimal("1.1"))


def test_a_bad_litellm_number_names_the_model_and_field(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps({"gpt-4o": {"input_cost_per_token": -1, "output_cost_per_token": 0}})
    )

    with pytest.raises(SettingsError, match=r"gpt-4o.*`input`"):
        load_catalog(path)


# --- bad catalogs are refused with a clear message --------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("input: -1, output: 2", r"gpt-test.*`input`.*non-negative"),
        ("input: 1, output: lots", r"gpt-test.*`output`.*must be a number"),
        ("input: 1, output: 2, cache_read: .inf", r"gpt-test.*`cache_read`"),
        ("input: 1", r"gpt-test.*`output` is required"),
        ("input: 1, output: 2, effective_to: 2025-01-01", r"gpt-test.*`effective_to`.*after"),
        ("input: 1, output: 2, inptu: 3", r"gpt-test.*unknown field `inptu`"),
        ("input: 1, output: 2, request_usd: -0.5", r"gpt-test.*`request_usd`"),
    ],
)
def test_bad_yaml_values_name_the_model_and_field(entry: str, message: str) -> None:
    text = (
        f"prices:\n  - {{provider: openai, model: gpt-test, effective_from: 2025-06-01, {entry}}}"
    )

    with pytest.raises(SettingsError, match=message):
        read_catalog_yaml(text)


def test_a_bad_catalog_file_is_named_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "prices:\n  - {model: gpt-test, effective_from: 2025-06-01, input: x, output: 1}"
    )

    with pytest.raises(SettingsError, match=r"prices\.yaml.*gpt-test.*`input`"):
        load_catalog(path)


def test_two_prices_for_the_same_model_and_day_are_refused() -> None:
    text = """
    prices:
      - {provider: openai, model: gpt-x, effective_from: 2026-01-01, input: 1, output: 2}
      - {provider: openai, model: gpt-x, effective_from: 2026-01-01, input: 3, output: 4}
    """

    with pytest.raises(SettingsError, match=r"openai/gpt-x.*2026-01-01"):
        read_catalog_yaml(text)


def test_a_float_price_in_code_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"gpt-x.*`input`.*float"):
        ModelPrice(
            model="gpt-x", provider=None, effective_from=date(2026, 1, 1), input=2.5, output=1
        )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "content"),
    [("prices.txt", "prices: []"), ("prices.yaml", "prices: [unclosed"), ("prices.json", "{")],
)
def test_unreadable_catalog_files_raise_settings_errors(
    tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content)

    with pytest.raises(SettingsError, match=name):
        load_catalog(path)


# --- properties --------------------------------------------------------------------------


rates = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=5_000_000)
KINDS = ("uncached", "cache_read", "cache_creation", "visible_output", "reasoning")


def _usage(tokens: dict[str, int], status: Status) -> dict[str, object]:
    return {
        "input_tokens": tokens["uncached"] + tokens["cache_read"] + tokens["cache_creation"],
        "cache_read_input_tokens": tokens["cache_read"],
        "cache_creation_input_tokens": tokens["cache_creation"],
        "output_tokens": tokens["visible_output"] + tokens["reasoning"],
        "reasoning_tokens": tokens["reasoning"],
        "status": status,
        "http_status": 200 if status is Status.OK else 502,
    }


@given(
    prices=st.tuples(rates, rates, rates, rates, rates, rates),
    tokens=st.fixed_dictionaries({kind: counts for kind in KINDS}),
    kind=st.sampled_from(KINDS),
    more=st.integers(min_value=1, max_value=1_000_000),
    status=st.sampled_from([Status.OK, Status.UPSTREAM_ERROR]),
)
def test_cost_grows_with_every_kind_of_token_and_equals_its_parts(
    prices: tuple[Decimal, ...],
    tokens: dict[str, int],
    kind: str,
    more: int,
    status: Status,
) -> None:
    input_rate, output_rate, cache_read, cache_creation, reasoning, fee = prices
    catalog = PriceCatalog(
        [
            ModelPrice(
                provider="openai",
                model="m",
                effective_from=date(2020, 1, 1),
                input=input_rate,
                output=output_rate,
                cache_read=cache_read,
                cache_creation=cache_creation,
                reasoning=reasoning,
                request_usd=fee,
            )
        ]
    )
    base = priced_call(catalog, request_model="m", **_usage(tokens, status))
    grown = priced_call(
        catalog, request_model="m", **_usage({**tokens, kind: tokens[kind] + more}, status)
    )

    assert grown.cost_usd >= base.cost_usd
    for priced in (base, grown):
        assert priced.cost_usd == parts_sum(priced)
        assert all(type(getattr(priced, part)) is Decimal for part in COST_PARTS)
