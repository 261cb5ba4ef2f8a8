"""What a period would have cost under another catalog: a what-if from the usage facts.

Every cost in the lake was derived from an immutable usage event, so a period can be
priced again under any catalog (new list prices, a negotiated contract) without touching
the lake. The report puts four figures side by side per group:

- ``old_list_usd``: what the calls cost at the list prices that priced them (for rows
  written before list costs were kept, their ``cost_usd``);
- ``old_billed_usd``: what they were billed (``cost_usd``: list, or a contract's price);
- ``new_list_usd`` and ``new_billed_usd``: the same two under the new catalog, priced by
  the meter's own code (``PriceCatalog.price``) at the prices in force on each call's day;

and ``delta_usd`` = new billed - old billed. Money stays exact (``decimal128(38, 12)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa

from analytics.lake_events import lake_events
from analytics.query_parts import filter_values
from analytics.query_terms import Dimension, Filters, QueryError
from tollgate.contract import PricedEvent
from tollgate.lake import MONEY
from tollgate.pricing import PriceCatalog

DEFAULT_GROUPS = (Dimension.TENANT, Dimension.MODEL)
MONEY_COLUMNS = ("old_list_usd", "old_billed_usd", "new_list_usd", "new_billed_usd", "delta_usd")


@dataclass
class _Sums:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    repriced_by_contract: int = 0
    fallback: int = 0
    money: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)


def reprice(
    lake: Path,
    catalog: PriceCatalog,
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = DEFAULT_GROUPS,
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> pa.Table:
    """The what-if report for events ending in ``[start, end)``; see the module docstring.

    ``filters`` keep rows as the queries' do (OR within a dimension, AND across them).

    Columns: the ``group_by`` dimensions, ``requests``, ``input_tokens``,
    ``output_tokens``, ``contract_priced`` (calls a contract of the new catalog priced),
    ``fallback_priced`` (calls of models the new catalog does not know), then
    ``MONEY_COLUMNS``. Ordered by the groups; one row per group that had calls.
    """
    groups = _dimensions(group_by)
    wanted = filter_values(filters)
    events = lake_events(lake, start, end, tenant_scope=tenant_scope)
    if wanted:
        events = (
            event
            for event in events
            if all(dimension_value(event, d) in values for d, values in wanted.items())
        )
    return report(events, catalog, groups)


def report(
    events: Iterable[PricedEvent], catalog: PriceCatalog, groups: Sequence[Dimension]
) -> pa.Table:
    """The report over ``events`` (already priced once), grouped by ``groups``."""
    sums: dict[tuple[str | None, ...], _Sums] = {}
    for event in events:
        key = tuple(dimension_value(event, d) for d in groups)
        row = sums.get(key)
        if row is None:
            row = sums[key] = _Sums()
        again = catalog.price(event)
        row.requests += 1
        row.input_tokens += event.input_tokens
        row.output_tokens += event.output_tokens
        row.repriced_by_contract += again.contract_version is not None
        row.fallback += again.price_fallback
        figures = (event.listed_cost_usd, event.cost_usd, again.listed_cost_usd, again.cost_usd)
        for i, amount in enumerate(figures):
            row.money[i] += amount
    ordered = sorted(sums.items(), key=lambda item: tuple((v is None, v or "") for v in item[0]))
    columns: dict[str, pa.Array] = {
        d.value: pa.array([key[i] for key, _ in ordered], pa.string()) for i, d in enumerate(groups)
    }
    for name in ("requests", "input_tokens", "output_tokens"):
        columns[name] = pa.array([getattr(s, name) for _, s in ordered], pa.int64())
    columns["contract_priced"] = pa.array([s.repriced_by_contract for _, s in ordered], pa.int64())
    columns["fallback_priced"] = pa.array([s.fallback for _, s in ordered], pa.int64())
    for i, name in enumerate(MONEY_COLUMNS[:4]):
        columns[name] = pa.array([s.money[i] for _, s in ordered], MONEY)
    columns["delta_usd"] = pa.array([s.money[3] - s.money[1] for _, s in ordered], MONEY)
    return pa.table(columns)


def dimension_value(event: PricedEvent, dimension: Dimension) -> str | None:
    """The value ``event`` has for ``dimension``, as the lake's views define it."""
    if dimension is Dimension.MODEL:
        return event.request_model or event.response_model
    value = getattr(event, dimension.value)
    return None if value is None else str(value)


def _dimensions(group_by: Sequence[Dimension | str]) -> list[Dimension]:
    if isinstance(group_by, str):
        group_by = [group_by]
    found = []
    for name in group_by:
        try:
            dimension = Dimension(name)
        except ValueError:
            allowed = ", ".join(d.value for d in Dimension)
            raise QueryError(f"unknown dimension {name!r}; use one of: {allowed}") from None
        if dimension in found:
            raise QueryError(f"group_by names {dimension.value} twice")
        found.append(dimension)
    return found
