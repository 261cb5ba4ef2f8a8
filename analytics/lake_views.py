"""The SQL views a ``Lake`` defines over the Parquet files, and the price table.

Each sub-lake's view is an empty table typed by its ``tollgate.lake`` schema, ``UNION ALL
BY NAME`` its live files (``analytics.lake_files``): a column no file has yet still reads
(as null) with its type, a column only newer files have reads as null in older ones
(``union_by_name``), and a column this code does not know passes through for ad-hoc SQL.
A view names its files one by one, never by a glob: a file superseded by a compacted one
is never read, nor a ``.tmp`` file still being written. The ``date`` column comes from
each file's ``date=`` directory (hive partitioning), so a filter on ``date`` still opens
only the partitions it names. Until a sub-lake has a file, its view is the empty table."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import duckdb
import pyarrow as pa

from analytics.query_parts import sql_text
from tollgate.lake import ALERTS, BUDGET_STATE, EVALUATIONS, MONEY, PRICED, SCHEMAS
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.model_price import ModelPrice

VIEWS = {
    PRICED: "priced_usage",
    ALERTS: "alerts",
    BUDGET_STATE: "budget_state",
    EVALUATIONS: "evaluations",
}
"""Sub-lake directory → the view over its files (``priced`` first: the join views read it)."""
EVALUATED_USAGE = (
    "CREATE OR REPLACE VIEW evaluated_usage AS SELECT e.evaluation_id, "
    "e.name AS evaluation_name, e.score_value, e.score_label, e.explanation, e.evaluator, "
    "e.time AS evaluated_at, e.api_key_id AS evaluated_by, p.* "
    "FROM evaluations e JOIN priced_usage p "
    "ON p.event_id = e.event_id AND p.tenant IS NOT DISTINCT FROM e.tenant"
)
"""One row per evaluation, beside every column of the priced call it judges. The tenant
is part of the join: an evaluation never reaches another tenant's call."""
MONEY_COLUMNS = (
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_creation_cost_usd",
    "output_cost_usd",
    "request_cost_usd",
    "cost_usd",
    "price_version",
    "price_fallback",
    "list_cost_usd",
    "contract_version",
)
"""What ``usage`` leaves out of ``priced_usage``."""
_PICO = Decimal("1e-12")


def create_tables(connection: duckdb.DuckDBPyConnection, catalog: PriceCatalog) -> None:
    """The typed empty table behind each view, and the ``prices`` view."""
    for sub_lake in VIEWS:
        empty = SCHEMAS[sub_lake].empty_table()
        connection.register("_empty_arrow", empty)
        connection.execute(
            f"CREATE TABLE _{sub_lake}_columns AS "
            f"SELECT *, CAST(NULL AS DATE) AS date FROM _empty_arrow LIMIT 0"
        )
        connection.unregister("_empty_arrow")
    connection.register("_prices_arrow", price_table(catalog))
    connection.execute("CREATE TABLE _prices AS SELECT * FROM _prices_arrow")
    connection.unregister("_prices_arrow")
    connection.execute("CREATE VIEW prices AS SELECT * FROM _prices")


def define_view(
    connection: duckdb.DuckDBPyConnection, sub_lake: str, files: Sequence[Path]
) -> None:
    """(Re)define the view of ``sub_lake`` over exactly ``files`` (empty when there are none)."""
    rows = f"SELECT * FROM _{sub_lake}_columns"
    if files:
        listed = ", ".join(sql_text(str(path)) for path in files)
        rows += (
            f" UNION ALL BY NAME SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
            f"union_by_name = true, hive_types = {{'date': 'DATE'}})"
        )
    view = VIEWS[sub_lake]
    if sub_lake == PRICED:
        connection.execute(
            f"CREATE OR REPLACE VIEW {view} AS SELECT *, "
            f"coalesce(request_model, response_model) AS model, "
            f"input_tokens + output_tokens AS total_tokens FROM ({rows})"
        )
        connection.execute(
            f"CREATE OR REPLACE VIEW usage AS SELECT * EXCLUDE ({', '.join(MONEY_COLUMNS)}) "
            f"FROM {view}"
        )
    else:
        connection.execute(f"CREATE OR REPLACE VIEW {view} AS {rows}")
    if sub_lake == EVALUATIONS:
        connection.execute(EVALUATED_USAGE)


def price_table(catalog: PriceCatalog) -> pa.Table:
    """One row per price version: USD per token (exact to 12 decimals) for each part."""
    entries: dict[str, tuple[ModelPrice, bool]] = {}
    for price in catalog.prices:
        entries.setdefault(price.version, (price, False))
    if catalog.fallback is not None:
        # Named as the catalog names it on the events it prices.
        version = f"fallback@{catalog.fallback.effective_from.isoformat()}"
        entries.setdefault(version, (catalog.fallback, True))
    rows = [
        {
            "price_version": version,
            "provider": price.provider,
            "model": None if fallback else price.model,
            "effective_from": price.effective_from,
            "effective_to": price.effective_to,
            "fallback": fallback,
            "input_usd": _per_token(price.per_token[0]),
            "cache_read_usd": _per_token(price.per_token[1]),
            "cache_creation_usd": _per_token(price.per_token[2]),
            "output_usd": _per_token(price.per_token[3]),
            "reasoning_usd": _per_token(price.per_token[4]),
            "cache_creation_1h_usd": _per_token(price.cache_creation_1h_per_token),
            "per_request_usd": _per_token(price.request_usd),
        }
        for version, (price, fallback) in entries.items()
    ]
    schema = pa.schema(
        [
            ("price_version", pa.string()),
            ("provider", pa.string()),
            ("model", pa.string()),
            ("effective_from", pa.date32()),
            ("effective_to", pa.date32()),
            ("fallback", pa.bool_()),
            *((name, MONEY) for name in _RATE_COLUMNS),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


_RATE_COLUMNS = (
    "input_usd",
    "cache_read_usd",
    "cache_creation_usd",
    "output_usd",
    "reasoning_usd",
    "cache_creation_1h_usd",
    "per_request_usd",
)


def _per_token(rate: Decimal) -> Decimal:
    """The lake keeps 12 decimals; a rate finer than that cannot price a stored cost."""
    return rate.quantize(_PICO, ROUND_HALF_EVEN)
