"""The FOCUS export, validated column by column against FinOps FOCUS 1.2.

The spec's columns are written out below (from the FOCUS 1.2 specification: column id,
data type, whether nulls are allowed, feature level) and every column the export claims
is checked against them, over the API (CSV and Parquet) and the ``tollgate`` command.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from analytics.focus import focus_table
from analytics.reporting import BackgroundServer, KeyRing, create_app, hash_key
from tests.billing_world import (
    ACME_OPENAI_20_OFF,
    END,
    LIST_PRICES,
    START,
    billed_catalog,
    readme_command,
    write_billed_lake,
)
from tollgate.settings import ReportingSettings

ADMIN_KEY = "admin-focus-41c2"
ACME_KEY = "acme-focus-77e0"


@dataclass(frozen=True)
class FocusColumn:
    name: str
    data_type: str  # Decimal, String, DateTime, JSON
    allows_nulls: bool
    feature_level: str  # Mandatory, Conditional, Recommended
    allowed: frozenset[str] | None = None


# FinOps FOCUS 1.2: every Mandatory column, and the Conditional and Recommended ones that
# apply to metered AI calls (the export claims them; the conditions hold for it).
FOCUS_1_2 = [
    FocusColumn("BilledCost", "Decimal", False, "Mandatory"),
    FocusColumn("BillingAccountId", "String", False, "Mandatory"),
    FocusColumn("BillingAccountName", "String", True, "Mandatory"),
    FocusColumn("BillingCurrency", "String", False, "Mandatory"),
    FocusColumn("BillingPeriodEnd", "DateTime", False, "Mandatory"),
    FocusColumn("BillingPeriodStart", "DateTime", False, "Mandatory"),
    FocusColumn(
        "ChargeCategory",
        "String",
        False,
        "Mandatory",
        frozenset({"Usage", "Purchase", "Tax", "Credit", "Adjustment"}),
    ),
    FocusColumn("ChargeClass", "String", True, "Mandatory", frozenset({"Correction"})),
    FocusColumn("ChargeDescription", "String", True, "Mandatory"),
    FocusColumn(
        "ChargeFrequency",
        "String",
        False,
        "Recommended",
        frozenset({"One-Time", "Recurring", "Usage-Based"}),
    ),
    FocusColumn("ChargePeriodEnd", "DateTime", False, "Mandatory"),
    FocusColumn("ChargePeriodStart", "DateTime", False, "Mandatory"),
    FocusColumn("ConsumedQuantity", "Decimal", True, "Conditional"),
    FocusColumn("ConsumedUnit", "String", True, "Conditional"),
    FocusColumn("ContractedCost", "Decimal", False, "Mandatory"),
    FocusColumn("ContractedUnitPrice", "Decimal", True, "Conditional"),
    FocusColumn("EffectiveCost", "Decimal", False, "Mandatory"),
    FocusColumn("InvoiceIssuerName", "String", False, "Mandatory"),
    FocusColumn("ListCost", "Decimal", False, "Mandatory"),
    FocusColumn("ListUnitPrice", "Decimal", True, "Conditional"),
    FocusColumn(
        "PricingCategory",
        "String",
        True,
        "Conditional",
        frozenset({"Standard", "Dynamic", "Committed", "Other"}),
    ),
    FocusColumn("PricingQuantity", "Decimal", True, "Mandatory"),
    FocusColumn("PricingUnit", "String", True, "Mandatory"),
    FocusColumn("ProviderName", "String", False, "Mandatory"),
    FocusColumn("PublisherName", "String", False, "Mandatory"),
    FocusColumn(
        "ServiceCategory", "String", False, "Mandatory", frozenset({"AI and Machine Learning"})
    ),
    FocusColumn("ServiceName", "String", False, "Mandatory"),
    FocusColumn(
        "ServiceSubcategory",
        "String",
        False,
        "Mandatory",
        frozenset(
            {
                "Bots",
                "Generative AI",
                "Machine Learning",
                "Natural Language Processing",
                "Other (AI and Machine Learning)",
            }
        ),
    ),
    FocusColumn("SkuId", "String", True, "Conditional"),
    FocusColumn("SkuPriceId", "String", True, "Conditional"),
    FocusColumn("SubAccountId", "String", True, "Conditional"),
    FocusColumn("SubAccountName", "String", True, "Conditional"),
    FocusColumn("Tags", "JSON", True, "Conditional"),
]
ARROW_TYPES = {
    "Decimal": pa.types.is_decimal,
    "String": pa.types.is_string,
    "DateTime": lambda t: pa.types.is_timestamp(t) and t.tz == "UTC",
    "JSON": pa.types.is_string,
}


@dataclass
class World:
    lake: Path
    url: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lake = tmp_path_factory.mktemp("focus") / "lake"
    write_billed_lake(lake)
    keys_file = lake.parent / "keys.yaml"
    keys_file.write_text(
        f"keys:\n  - {{id: acme-finance, key_sha256: '{hash_key(ACME_KEY)}', tenant: acme}}\n"
    )
    keys = KeyRing.from_settings(ReportingSettings(admin_key=ADMIN_KEY, keys_file=keys_file))
    with BackgroundServer(create_app(lake, keys, catalog=billed_catalog())) as server:
        yield World(lake, server.url)


def export(world: World, key: str, fmt: str) -> httpx.Response:
    return httpx.get(
        f"{world.url}/v1/export/focus",
        params={"start": START, "end": END, "format": fmt},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def parquet_rows(world: World, key: str = ADMIN_KEY) -> pa.Table:
    answer = export(world, key, "parquet")
    assert answer.status_code == 200, answer.text
    return pq.read_table(io.BytesIO(answer.content))


def validate(table: pa.Table) -> None:
    """Every FOCUS 1.2 column present, of its type, null only where allowed, with an
    allowed value; custom columns prefixed ``x_``; the period columns consistent."""
    spec = {column.name: column for column in FOCUS_1_2}
    for column in FOCUS_1_2:
        assert column.name in table.column_names, column.name
        values = table.column(column.name)
        assert ARROW_TYPES[column.data_type](values.type), (column.name, values.type)
        if not column.allows_nulls:
            assert values.null_count == 0, column.name
        if column.allowed is not None:
            assert set(values.drop_null().to_pylist()) <= column.allowed, column.name
        if column.data_type == "JSON":
            for text in values.drop_null().to_pylist():
                assert isinstance(json.loads(text), dict)
    for name in table.column_names:
        assert name in spec or name.startswith("x_"), f"{name} is neither FOCUS nor x_"
    for row in table.to_pylist():
        assert row["ChargePeriodStart"] < row["ChargePeriodEnd"]
        assert row["BillingPeriodStart"] <= row["ChargePeriodStart"]
        assert row["ChargePeriodEnd"] <= row["BillingPeriodEnd"]
        assert row["BilledCost"] == row["EffectiveCost"] == row["ContractedCost"]
        assert row["ListCost"] >= row["BilledCost"]
        for cost, unit_price in (
            ("ListCost", "ListUnitPrice"),
            ("BilledCost", "ContractedUnitPrice"),
        ):
            assert row[unit_price] * row["PricingQuantity"] == pytest.approx(
                row[cost], abs=Decimal("1e-9")
            )


def by_sku(table: pa.Table) -> dict[tuple[str, str], dict[str, object]]:
    return {(row["BillingAccountId"], row["SkuId"]): row for row in table.to_pylist()}


def test_the_parquet_export_has_every_focus_column_with_its_type(world: World) -> None:
    validate(parquet_rows(world))


def test_each_row_bills_the_contract_price_with_the_list_price_beside_it(world: World) -> None:
    """acme's two gpt-4o calls (1M input of which 400k cached, 100k output each) at 20 % off
    list; the Claude call at list (80k input, 10k + 10k cache writes at 3.75 and 6, 10k
    output); globex's 1,000 gpt-4o input tokens at list. The duplicate and the refused call
    add nothing."""
    rows = by_sku(parquet_rows(world))

    expected = {
        ("acme", "openai/gpt-4o/input"): (1_200_000, "2.4", "3.0", "2", "2.5"),
        ("acme", "openai/gpt-4o/cache_read"): (800_000, "0.8", "1.0", "1", "1.25"),
        ("acme", "openai/gpt-4o/output"): (200_000, "1.6", "2.0", "8", "10"),
        ("acme", "anthropic/claude-sonnet-4/input"): (80_000, "0.24", "0.24", "3", "3"),
        ("acme", "anthropic/claude-sonnet-4/cache_write"): (
            20_000,
            "0.0975",
            "0.0975",
            "4.875",
            "4.875",
        ),
        ("acme", "anthropic/claude-sonnet-4/output"): (10_000, "0.15", "0.15", "15", "15"),
        ("globex", "openai/gpt-4o/input"): (1_000, "0.0025", "0.0025", "2.5", "2.5"),
    }
    assert set(rows) == set(expected)
    for key, (tokens, billed, listed, contracted_unit, list_unit) in expected.items():
        row = rows[key]
        assert row["ConsumedQuantity"] == Decimal(tokens), key
        assert row["PricingQuantity"] == Decimal(tokens) / 1_000_000, key
        assert (row["ConsumedUnit"], row["PricingUnit"]) == ("Tokens", "1M Tokens")
        assert row["BilledCost"] == Decimal(billed), key
        assert row["ListCost"] == Decimal(listed), key
        assert row["ContractedUnitPrice"] == Decimal(contracted_unit), key
        assert row["ListUnitPrice"] == Decimal(list_unit), key
    acme_input = rows[("acme", "openai/gpt-4o/input")]
    assert acme_input["x_ContractVersion"] == "contract/acme/openai/*@2026-01-01"
    assert acme_input["ChargePeriodStart"] == datetime(2026, 3, 10, tzinfo=UTC)
    assert acme_input["BillingPeriodStart"] == datetime(2026, 3, 1, tzinfo=UTC)
    assert acme_input["BillingPeriodEnd"] == datetime(2026, 4, 1, tzinfo=UTC)
    assert acme_input["SubAccountId"] == "search"
    assert json.loads(acme_input["Tags"]) == {"env": "prod"}
    assert (acme_input["ProviderName"], acme_input["ServiceName"]) == ("OpenAI", "OpenAI API")


def test_the_csv_export_carries_the_same_columns_and_figures(world: World) -> None:
    answer = export(world, ADMIN_KEY, "csv")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    as_text = pa.schema([(f.name, pa.string()) for f in parquet_rows(world).schema])
    csv = pacsv.read_csv(
        io.BytesIO(answer.content), convert_options=pacsv.ConvertOptions(column_types=as_text)
    )

    assert csv.column_names == parquet_rows(world).column_names
    billed = sum(Decimal(value) for value in csv.column("BilledCost").to_pylist())
    assert billed == Decimal("5.29")  # 2.4 + 0.8 + 1.6 + 0.24 + 0.0975 + 0.15 + 0.0025


def test_a_tenant_key_exports_only_its_tenant(world: World) -> None:
    rows = parquet_rows(world, ACME_KEY)

    assert set(rows.column("BillingAccountId").to_pylist()) == {"acme"}
    validate(rows)


def test_bad_export_parameters_are_refused_naming_them(world: World) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    too_long = httpx.get(
        f"{world.url}/v1/export/focus",
        params={"start": "2026-01-01T00:00:00Z", "end": "2026-12-31T00:00:00Z"},
        headers=headers,
    )
    json_format = httpx.get(
        f"{world.url}/v1/export/focus", params={"format": "json"}, headers=headers
    )
    no_key = httpx.get(f"{world.url}/v1/export/focus")

    assert too_long.status_code == 422
    assert "93 days" in too_long.text
    assert json_format.status_code == 422
    assert "format" in json_format.text
    assert no_key.status_code == 401


def test_the_readme_export_command_writes_the_api_rows(world: World, tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "lake").symlink_to(world.lake)
    catalog = tmp_path / "prices.yaml"
    catalog.write_text(LIST_PRICES + ACME_OPENAI_20_OFF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    env["TOLLGATE_STREAM_PRICE_CATALOG"] = str(catalog)

    result = subprocess.run(
        readme_command("tollgate export focus"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    (written,) = [p for p in tmp_path.iterdir() if p.name.startswith("focus.")]
    table = pq.read_table(written) if written.suffix == ".parquet" else None
    assert table is not None
    validate(table)
    assert by_sku(table) == by_sku(parquet_rows(world))


def test_the_export_reads_what_focus_table_builds(world: World) -> None:
    direct = focus_table(
        world.lake,
        billed_catalog(),
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 4, 1, tzinfo=UTC),
    )

    assert direct.equals(parquet_rows(world))
