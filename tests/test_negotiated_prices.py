"""Negotiated prices: a contract prices the calls it covers, the list price stays beside it."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.factories import make_usage
from tests.stream_world import StreamWorker, TopicReader, produce, usage_records, worker_env
from tollgate.contract import Alert, AlertKind, PricedEvent, UsageEvent
from tollgate.errors import SettingsError
from tollgate.ids import uuid7
from tollgate.lake import priced_to_table, read_priced, table_to_priced, write_parquet
from tollgate.pricing import read_catalog_yaml
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

LIST = """
prices:
  - provider: openai
    model: gpt-4o
    effective_from: 2024-08-06
    input: 2.50
    output: 10.00
    cache_read: 1.25
  - provider: anthropic
    model: claude-sonnet-4
    effective_from: 2025-05-14
    input: 3
    output: 15
fallback:
  effective_from: 2024-01-01
  input: 150
  output: 600
"""
CONTRACTS = """
contracts:
  - provider: openai                 # every tenant: 10 % off OpenAI
    effective_from: 2026-01-01
    discount_pct: 10
  - tenant: acme                     # acme's own deal on gpt-4o, from March
    model: gpt-4o
    effective_from: 2026-03-01
    discount_pct: 20
    output: 6.00
  - tenant: acme
    effective_from: 2026-01-01
    effective_to: 2026-02-01
    discount_pct: 50
"""
MARCH = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return read_catalog_yaml(LIST + CONTRACTS)


def gpt_4o(at: datetime = MARCH, **fields: object) -> UsageEvent:
    defaults: dict[str, object] = {
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "input_tokens": 1_000_000,
        "cache_read_input_tokens": 400_000,
        "output_tokens": 100_000,
        "time": at,
    }
    defaults.update(fields)
    return make_usage(**defaults)


def test_a_contract_rate_and_a_discount_price_the_call_and_the_list_price_is_kept(
    catalog,  # type: ignore[no-untyped-def]
) -> None:
    priced = catalog.price(gpt_4o())

    # List: 600k x 2.50 + 400k x 1.25 + 100k x 10 = 1.50 + 0.50 + 1.00 = 3.00.
    # acme/gpt-4o: input and cache reads 20 % off (2.00, 1.00), output at 6.00 -> 2.40.
    assert priced.list_cost_usd == Decimal("3.00")
    assert priced.input_cost_usd == Decimal("1.2")
    assert priced.cache_read_cost_usd == Decimal("0.4")
    assert priced.output_cost_usd == Decimal("0.6")
    assert priced.cost_usd == Decimal("2.2")
    assert priced.contract_version == "contract/acme/*/gpt-4o@2026-03-01"
    assert priced.price_version == "openai/gpt-4o@2024-08-06"


def test_the_most_specific_contract_in_force_wins(catalog) -> None:  # type: ignore[no-untyped-def]
    january_acme = catalog.price(gpt_4o(at=datetime(2026, 1, 15, tzinfo=UTC)))
    february_acme = catalog.price(gpt_4o(at=datetime(2026, 2, 15, tzinfo=UTC)))
    march_globex = catalog.price(gpt_4o(tenant="globex"))
    last_year = catalog.price(gpt_4o(at=datetime(2025, 12, 31, 23, 59, tzinfo=UTC)))

    assert (january_acme.contract_version, january_acme.cost_usd) == (
        "contract/acme/*/*@2026-01-01",
        Decimal("1.5"),  # half of 3.00
    )
    assert (february_acme.contract_version, february_acme.cost_usd) == (
        "contract/*/openai/*@2026-01-01",
        Decimal("2.7"),  # 10 % off 3.00
    )
    assert march_globex.contract_version == "contract/*/openai/*@2026-01-01"
    assert (last_year.contract_version, last_year.cost_usd) == (None, Decimal("3.00"))
    assert last_year.list_cost_usd is None  # billed at list: the list cost is cost_usd


def test_another_provider_is_not_covered_by_a_provider_contract(catalog) -> None:  # type: ignore[no-untyped-def]
    claude = catalog.price(
        gpt_4o(
            tenant="globex",
            provider="anthropic",
            request_model="claude-sonnet-4",
            response_model=None,
            cache_read_input_tokens=0,
        )
    )

    assert claude.contract_version is None
    assert claude.cost_usd == claude.listed_cost_usd == Decimal("4.5")  # 3 + 1.5


def test_a_discount_with_no_exact_decimal_is_rounded_once_to_the_picodollar() -> None:
    thirds = read_catalog_yaml(
        LIST + "contracts:\n  - effective_from: 2026-01-01\n    discount_pct: 33.3333\n"
    )

    priced = thirds.price(gpt_4o(input_tokens=7, cache_read_input_tokens=0, output_tokens=0))

    # 7 x 2.50 / 1M x 0.666667 = 0.0000116666725 -> 12 decimals, half to even
    assert priced.input_cost_usd == Decimal("0.000011666672")
    assert priced.list_cost_usd == Decimal("0.0000175")


@pytest.mark.parametrize(
    ("contracts", "message"),
    [
        ("  - effective_from: 2026-01-01\n    discount_pct: 120\n", "at most 100"),
        ("  - effective_from: 2026-01-01\n    discount: 10\n", "unknown field `discount`"),
        ("  - tenant: acme\n    discount_pct: 10\n", "`effective_from` is required"),
        (
            "  - tenant: acme\n    effective_from: 2026-01-01\n"
            "  - tenant: acme\n    effective_from: 2026-01-01\n",
            "overlaps",
        ),
        ("  - effective_from: 2026-01-01\n    input: -1\n", "non-negative"),
    ],
)
def test_bad_contracts_are_refused_naming_the_field(contracts: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        read_catalog_yaml(LIST + "contracts:\n" + contracts)


def test_contract_columns_reach_the_lake_and_files_without_them_still_read(
    catalog,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    priced = catalog.price(gpt_4o())
    new = priced_to_table([priced])
    old = new.drop_columns(["cache_creation_1h_input_tokens", "list_cost_usd", "contract_version"])
    day = tmp_path / "priced" / f"date={priced.end_time.date().isoformat()}"
    write_parquet(new, day / "new.parquet")
    write_parquet(old, day / "old.parquet")

    rows = [e for batch in read_priced(tmp_path) for e in table_to_priced(batch)]

    by_contract = {e.contract_version: e for e in rows}
    assert by_contract["contract/acme/*/gpt-4o@2026-03-01"].list_cost_usd == Decimal("3")
    assert by_contract[None].list_cost_usd is None  # an old file: list is cost_usd
    assert by_contract[None].cost_usd == priced.cost_usd


@pytest.fixture
def contract_worker(
    kafka_settings: KafkaSettings, broker: str, tmp_path: Path
) -> Iterator[StreamWorker]:
    catalog = tmp_path / "prices.yaml"
    today = datetime.now(UTC).date()
    catalog.write_text(
        LIST + f"contracts:\n  - tenant: acme\n    effective_from: {today - timedelta(days=1)}\n"
        "    discount_pct: 25\n"
    )
    env = worker_env(kafka_settings, broker, tmp_path, TOLLGATE_STREAM_PRICE_CATALOG=str(catalog))
    running = StreamWorker(env, tmp_path / "worker.log").start()
    yield running
    running.stop()


@pytest.mark.timeout(150)
async def test_the_worker_prices_at_the_contract_and_alerts_once_on_an_unpriced_model(
    contract_worker: StreamWorker, kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    now = datetime.now(UTC)
    known = [
        gpt_4o(event_id=uuid7(), at=now - timedelta(seconds=1), end_time=now) for _ in range(3)
    ]
    unknown = [
        gpt_4o(
            event_id=uuid7(),
            at=now - timedelta(seconds=1),
            end_time=now,
            request_model="brand-new-model",
            response_model=None,
            cache_read_input_tokens=0,
            input_tokens=1_000,
            output_tokens=0,
        )
        for _ in range(2)
    ]
    priced = await TopicReader(kafka_settings, broker, topics.priced).start()
    alerts = await TopicReader(kafka_settings, broker, topics.alerts).start()
    try:
        await produce(kafka_settings, broker, topics.usage, usage_records(known + unknown))
        await priced.wait_for(lambda r: len(r) >= 5, timeout_s=60)
        await alerts.wait_for(lambda r: len(r) >= 1, timeout_s=30)
        await priced.settle()
        await alerts.settle()
    finally:
        await priced.stop()
        await alerts.stop()

    out = {e.event_id: e for e in priced.decoded(PricedEvent)}
    for event in known:
        billed = out[event.event_id]
        assert billed.list_cost_usd == Decimal("3")
        assert billed.cost_usd == Decimal("2.25")  # 25 % off
        assert billed.contract_version is not None
        assert billed.contract_version.startswith("contract/acme/*/*@")
    for event in unknown:
        fallback = out[event.event_id]
        assert fallback.price_fallback is True
        # 1,000 x 150 / 1M; no discount on a price that is a guess
        assert fallback.cost_usd == fallback.listed_cost_usd == Decimal("0.15")
        assert fallback.contract_version is None
    (alert,) = alerts.decoded(Alert)
    assert alert.kind is AlertKind.UNPRICED_MODEL
    assert "brand-new-model" in alert.summary


def test_the_readme_contracts_example_prices_as_it_says() -> None:
    from tests.billing_world import README

    text = README.read_text()
    start = text.index("  ```yaml\n  contracts:") + len("  ```yaml\n")
    block = textwrap.dedent(text[start : text.index("  ```", start)])
    catalog = read_catalog_yaml(LIST + block)

    march = catalog.price(gpt_4o())  # acme's gpt-4o deal: output at 6.00, the rest at list
    february = catalog.price(gpt_4o(at=datetime(2026, 2, 2, tzinfo=UTC)))  # 20 % off

    assert (march.output_cost_usd, march.input_cost_usd) == (Decimal("0.6"), Decimal("1.5"))
    assert february.cost_usd == Decimal("2.4")
