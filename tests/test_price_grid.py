"""Every shipped model priced over a grid of usages, against figures written by hand.

The expected dollars below were worked out from the providers' public price pages
(OpenAI's and Anthropic's, per million tokens), not from Tollgate's catalog or code:
a wrong rate in ``default_prices.yaml``, a tier not applied, a cache write billed at the
wrong duration or a dated id priced as the wrong family each fails a row here.

The usages (token counts follow OTel: input includes cached, output includes reasoning):

- ``plain``:  1,000,000 input, 1,000,000 output (above 200k input: Claude Sonnet 4 / 4.5
  bill it at their long-context rates, as they do ``cached``).
- ``cached``: 1,000,000 input = 300,000 uncached + 500,000 cache reads + 100,000 5-minute
  cache writes + 100,000 1-hour cache writes; 100,000 output of which 50,000 reasoning.
- ``edge``:   200,000 input, 1,000 output: at the long-context threshold, not above it.
- ``long``:   300,000 input, 10,000 output: above 200k, so Claude Sonnet 4 / 4.5 bill the
  whole call at $6 / $22.50 (others at their only rates).
- ``long_cached``: 300,000 input = 100,000 uncached + 150,000 cache reads + 25,000
  5-minute + 25,000 1-hour cache writes; 20,000 output.

OpenAI bills no cache writes (its writes are billed as input), so its rows price them at
the input rate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.factories import make_usage
from tollgate.pricing import PriceCatalog, load_catalog

USAGES: dict[str, dict[str, int]] = {
    "plain": {"input_tokens": 1_000_000, "output_tokens": 1_000_000},
    "cached": {
        "input_tokens": 1_000_000,
        "cache_read_input_tokens": 500_000,
        "cache_creation_input_tokens": 200_000,
        "cache_creation_1h_input_tokens": 100_000,
        "output_tokens": 100_000,
        "reasoning_tokens": 50_000,
    },
    "edge": {"input_tokens": 200_000, "output_tokens": 1_000},
    "long": {"input_tokens": 300_000, "output_tokens": 10_000},
    "long_cached": {
        "input_tokens": 300_000,
        "cache_read_input_tokens": 150_000,
        "cache_creation_input_tokens": 50_000,
        "cache_creation_1h_input_tokens": 25_000,
        "output_tokens": 20_000,
    },
}

# provider, model id as called, then USD for: plain, cached, edge, long, long_cached
EXPECTED = [
    ("openai", "gpt-4o", "12.5", "2.875", "0.51", "0.85", "0.7625"),
    ("openai", "gpt-4o-2024-08-06", "12.5", "2.875", "0.51", "0.85", "0.7625"),
    ("openai", "gpt-4o-2024-05-13", "20", "6.5", "1.015", "1.65", "1.8"),
    ("openai", "gpt-4o-mini", "0.75", "0.1725", "0.0306", "0.051", "0.04575"),
    ("openai", "gpt-4.1", "10", "2.05", "0.408", "0.68", "0.535"),
    ("openai", "gpt-4.1-mini", "2", "0.41", "0.0816", "0.136", "0.107"),
    ("openai", "gpt-4.1-nano", "0.5", "0.1025", "0.0204", "0.034", "0.02675"),
    ("openai", "o1", "75", "17.25", "3.06", "5.1", "4.575"),
    ("openai", "o3", "10", "2.05", "0.408", "0.68", "0.535"),
    ("openai", "o3-mini", "5.5", "1.265", "0.2244", "0.374", "0.3355"),
    ("openai", "o4-mini", "5.5", "1.1275", "0.2244", "0.374", "0.29425"),
    ("openai", "text-embedding-3-small", "0.02", "0.02", "0.004", "0.006", "0.006"),
    ("openai", "text-embedding-3-large", "0.13", "0.13", "0.026", "0.039", "0.039"),
    ("openai", "text-embedding-ada-002", "0.1", "0.1", "0.02", "0.03", "0.03"),
    ("openai", "gpt-5", "11.25", "1.6875", "0.26", "0.475", "0.40625"),
    ("openai", "gpt-5-chat-latest", "11.25", "1.6875", "0.26", "0.475", "0.40625"),
    ("openai", "gpt-5-mini", "2.25", "0.3375", "0.052", "0.095", "0.08125"),
    ("openai", "gpt-5-nano", "0.45", "0.0675", "0.0104", "0.019", "0.01625"),
    ("openai", "gpt-5.1", "11.25", "1.6875", "0.26", "0.475", "0.40625"),
    ("openai", "gpt-5.1-chat-latest", "11.25", "1.6875", "0.26", "0.475", "0.40625"),
    ("openai", "gpt-4.5-preview", "225", "71.25", "15.15", "24", "19.875"),
    ("openai", "o1-pro", "750", "210", "30.6", "51", "57"),
    ("openai", "o1-mini", "5.5", "1.265", "0.2244", "0.374", "0.3355"),
    ("openai", "o3-pro", "100", "28", "4.08", "6.8", "7.6"),
    ("anthropic", "claude-opus-4", "90", "17.625", "3.075", "5.25", "4.44375"),
    ("anthropic", "claude-opus-4-0", "90", "17.625", "3.075", "5.25", "4.44375"),
    ("anthropic", "claude-opus-4-20250514", "90", "17.625", "3.075", "5.25", "4.44375"),
    ("anthropic", "claude-sonnet-4", "28.5", "6.3", "0.615", "2.025", "1.6275"),
    ("anthropic", "claude-sonnet-4-0", "28.5", "6.3", "0.615", "2.025", "1.6275"),
    ("anthropic", "claude-sonnet-4-20250514", "28.5", "6.3", "0.615", "2.025", "1.6275"),
    ("anthropic", "claude-3-7-sonnet", "18", "3.525", "0.615", "1.05", "0.88875"),
    ("anthropic", "claude-3-7-sonnet-20250219", "18", "3.525", "0.615", "1.05", "0.88875"),
    ("anthropic", "claude-3-5-sonnet", "18", "3.525", "0.615", "1.05", "0.88875"),
    ("anthropic", "claude-3-5-haiku", "4.8", "0.94", "0.164", "0.28", "0.237"),
    ("anthropic", "claude-haiku-3-5", "4.8", "0.94", "0.164", "0.28", "0.237"),
    ("anthropic", "claude-opus-4-5", "30", "5.875", "1.025", "1.75", "1.48125"),
    ("anthropic", "claude-opus-4-5-20251101", "30", "5.875", "1.025", "1.75", "1.48125"),
    ("anthropic", "claude-opus-4-1", "90", "17.625", "3.075", "5.25", "4.44375"),
    ("anthropic", "claude-sonnet-4-5", "28.5", "6.3", "0.615", "2.025", "1.6275"),
    ("anthropic", "claude-sonnet-4-5-20250929", "28.5", "6.3", "0.615", "2.025", "1.6275"),
    ("anthropic", "claude-haiku-4-5", "6", "1.175", "0.205", "0.35", "0.29625"),
    ("anthropic", "claude-haiku-4-5-20251001", "6", "1.175", "0.205", "0.35", "0.29625"),
    ("anthropic", "claude-3-opus", "90", "17.625", "3.075", "5.25", "4.44375"),
    ("anthropic", "claude-3-haiku", "1.5", "0.295", "0.05125", "0.0875", "0.0745"),
    # AWS Bedrock, on-demand list prices in us-east-1 (Bedrock's pricing page). Bedrock
    # lists no 1-hour cache-write rate and no long-context tier for these models: 1-hour
    # writes are billed at the 5-minute write rate, long inputs at the base rates, and a
    # model without cache rates bills cached tokens as input. Cross-region inference
    # profiles (us., eu., apac., global.) bill as the model they route to.
    (
        "aws.bedrock",
        "anthropic.claude-opus-4-20250514-v1:0",
        "90",
        "16.5",
        "3.075",
        "5.25",
        "4.1625",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "18",
        "3.3",
        "0.615",
        "1.05",
        "0.8325",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "18",
        "3.3",
        "0.615",
        "1.05",
        "0.8325",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "18",
        "3.3",
        "0.615",
        "1.05",
        "0.8325",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-sonnet-20241022-v2:0",
        "18",
        "3.3",
        "0.615",
        "1.05",
        "0.8325",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "4.8",
        "0.88",
        "0.164",
        "0.28",
        "0.222",
    ),
    (
        "aws.bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
        "1.5",
        "0.375",
        "0.05125",
        "0.0875",
        "0.1",
    ),
    ("aws.bedrock", "amazon.nova-pro-v1:0", "4", "0.82", "0.1632", "0.272", "0.214"),
    ("aws.bedrock", "amazon.nova-lite-v1:0", "0.3", "0.0615", "0.01224", "0.0204", "0.01605"),
    (
        "aws.bedrock",
        "amazon.nova-micro-v1:0",
        "0.175",
        "0.035875",
        "0.00714",
        "0.0119",
        "0.0093625",
    ),
    (
        "aws.bedrock",
        "meta.llama3-3-70b-instruct-v1:0",
        "1.44",
        "0.792",
        "0.14472",
        "0.2232",
        "0.2304",
    ),
    (
        "aws.bedrock",
        "meta.llama3-1-8b-instruct-v1:0",
        "0.44",
        "0.242",
        "0.04422",
        "0.0682",
        "0.0704",
    ),
]
BEDROCK_PROFILES = {
    "anthropic.claude-opus-4-20250514-v1:0": ("us", "eu", "apac"),
    "anthropic.claude-sonnet-4-20250514-v1:0": ("us", "eu", "apac", "global"),
    "anthropic.claude-sonnet-4-5-20250929-v1:0": ("us", "eu", "apac", "global"),
    "anthropic.claude-3-7-sonnet-20250219-v1:0": ("us", "eu", "apac"),
    "anthropic.claude-3-5-sonnet-20241022-v2:0": ("us", "eu", "apac"),
    "anthropic.claude-3-5-haiku-20241022-v1:0": ("us", "eu", "apac"),
    "anthropic.claude-3-haiku-20240307-v1:0": ("us", "eu", "apac"),
    "amazon.nova-pro-v1:0": ("us", "eu", "apac"),
    "amazon.nova-lite-v1:0": ("us", "eu", "apac"),
    "amazon.nova-micro-v1:0": ("us", "eu", "apac"),
    "meta.llama3-3-70b-instruct-v1:0": ("us",),
    "meta.llama3-1-8b-instruct-v1:0": ("us",),
}
"""The cross-region inference profiles Bedrock offers for each model: each bills as the
model it routes to."""
EXPECTED += [
    (provider, f"{prefix}.{model}", *figures)
    for provider, model, *figures in list(EXPECTED)
    for prefix in BEDROCK_PROFILES.get(model, ())
]
AT = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def shipped() -> PriceCatalog:
    return load_catalog()


@pytest.mark.parametrize(
    ("provider", "model", "plain", "cached", "edge", "long", "long_cached"), EXPECTED
)
def test_each_shipped_model_costs_its_list_price_over_the_usage_grid(
    shipped: PriceCatalog,
    provider: str,
    model: str,
    plain: str,
    cached: str,
    edge: str,
    long: str,
    long_cached: str,
) -> None:
    expected = dict(zip(USAGES, (plain, cached, edge, long, long_cached), strict=True))
    for usage, tokens in USAGES.items():
        fields = {"cache_read_input_tokens": 0, **tokens}
        event = make_usage(
            provider=provider, request_model=model, response_model=model, time=AT, **fields
        )
        priced = shipped.price(event)

        assert priced.price_fallback is False, (model, usage)
        assert priced.cost_usd == Decimal(expected[usage]), (model, usage)
        assert priced.listed_cost_usd == priced.cost_usd


def test_the_grid_covers_every_shipped_model_and_alias(shipped: PriceCatalog) -> None:
    gridded = {(provider, model) for provider, model, *_ in EXPECTED}
    shipped_ids = {(price.provider, price.model) for price in shipped.prices}

    assert shipped_ids - gridded == set(), "add hand-written figures for these models"


def test_an_undated_snapshot_older_than_its_family_is_not_priced_as_the_family(
    shipped: PriceCatalog,
) -> None:
    # gpt-4o-2024-05-13 has its own entry; an older, unlisted snapshot takes the fallback.
    listed = shipped.lookup("openai", "gpt-4o-2024-05-13", AT)
    older = shipped.lookup("openai", "gpt-4o-2024-04-01", AT)
    newer = shipped.lookup("openai", "gpt-4o-2024-11-20", AT)

    assert (listed.price.input, listed.price.output) == (Decimal(5), Decimal(15))  # type: ignore[union-attr]
    assert older.fallback is True
    assert (newer.version, newer.fallback) == ("openai/gpt-4o@2024-08-06", False)
