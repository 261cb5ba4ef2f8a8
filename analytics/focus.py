"""Costs as FinOps FOCUS 1.2 rows, for the FinOps tools that read them.

FOCUS (the FinOps Open Cost and Usage Specification) is the column set cloud bills are
exported in. One row per charge period (a UTC day) x tenant x team x provider x model x
token type, and the price that applied (``price_version``, ``contract_version``) and the
call's tags, so each row has one list price and one contract price:

- token types (``x_TokenType``) are the parts a priced event's cost is made of: ``input``
  (uncached), ``cache_read``, ``cache_write`` (5-minute and 1-hour together), ``output``
  (reasoning included), ``request`` (a per-call fee, in requests);
- ``BilledCost`` = ``EffectiveCost`` = ``ContractedCost``: what the calls were billed (the
  lake's cost parts, at the contract price where one applied; no commitments or
  amortisation exist here); ``ListCost``: the same usage at list price (the lake's parts
  when no contract applied, else the part priced again at list with ``catalog``);
- ``PricingUnit`` is ``1M Tokens`` (``Requests`` for fees) and ``PricingQuantity`` is in
  it; ``ListUnitPrice`` and ``ContractedUnitPrice`` are cost / ``PricingQuantity``, the
  rate itself unless a row mixes long-context and base rates or both cache durations
  (then their average, to 12 decimals);
- ``BillingAccountId``/``Name`` is the tenant, ``SubAccountId``/``Name`` the team;
  ``ProviderName`` and ``InvoiceIssuerName`` who served and bills the call (Microsoft for
  Azure OpenAI), ``PublisherName`` who made the model; ``SkuId`` names the model's token
  type (``openai/gpt-4o/input``), ``SkuPriceId`` the price that applied to it;
- ``Tags`` are the call's tags (from its API key), as JSON; ``x_`` columns are Tollgate's.

Money is exact ``decimal128(38, 12)``; instants are ``timestamp[us, UTC]``. A tenant scope
keeps every other tenant's rows out, as everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path

import pyarrow as pa

from analytics.lake_events import lake_events
from tollgate.contract import PricedEvent
from tollgate.lake import INSTANT, MONEY
from tollgate.pricing import PriceCatalog

FOCUS_VERSION = "1.2"
TOKEN_TYPES = ("input", "cache_read", "cache_write", "output", "request")
_PARTS = {
    "input": "input_cost_usd",
    "cache_read": "cache_read_cost_usd",
    "cache_write": "cache_creation_cost_usd",
    "output": "output_cost_usd",
    "request": "request_cost_usd",
}
_DESCRIBED = {
    "input": "input tokens",
    "cache_read": "cached input tokens read",
    "cache_write": "input tokens written to the cache",
    "output": "output tokens (reasoning included)",
    "request": "calls (per-call fee)",
}
_COMPANIES = {
    "openai": "OpenAI",
    "azure.ai.openai": "Microsoft",
    "anthropic": "Anthropic",
    "aws.bedrock": "AWS",
    "gcp.vertex_ai": "Google",
    "gcp.gemini": "Google",
}
_SERVICES = {
    "openai": "OpenAI API",
    "azure.ai.openai": "Azure OpenAI Service",
    "anthropic": "Anthropic API",
    "aws.bedrock": "Amazon Bedrock",
}
_PUBLISHERS = {"azure.ai.openai": "OpenAI"}
_MILLION = Decimal(1_000_000)
_PICO = Decimal("1e-12")
_WIDE = Context(prec=60)

FOCUS_SCHEMA = pa.schema(
    [
        ("BilledCost", MONEY),
        ("BillingAccountId", pa.string()),
        ("BillingAccountName", pa.string()),
        ("BillingCurrency", pa.string()),
        ("BillingPeriodEnd", INSTANT),
        ("BillingPeriodStart", INSTANT),
        ("ChargeCategory", pa.string()),
        ("ChargeClass", pa.string()),
        ("ChargeDescription", pa.string()),
        ("ChargeFrequency", pa.string()),
        ("ChargePeriodEnd", INSTANT),
        ("ChargePeriodStart", INSTANT),
        ("ConsumedQuantity", MONEY),
        ("ConsumedUnit", pa.string()),
        ("ContractedCost", MONEY),
        ("ContractedUnitPrice", MONEY),
        ("EffectiveCost", MONEY),
        ("InvoiceIssuerName", pa.string()),
        ("ListCost", MONEY),
        ("ListUnitPrice", MONEY),
        ("PricingCategory", pa.string()),
        ("PricingQuantity", MONEY),
        ("PricingUnit", pa.string()),
        ("ProviderName", pa.string()),
        ("PublisherName", pa.string()),
        ("ServiceCategory", pa.string()),
        ("ServiceName", pa.string()),
        ("ServiceSubcategory", pa.string()),
        ("SkuId", pa.string()),
        ("SkuPriceId", pa.string()),
        ("SubAccountId", pa.string()),
        ("SubAccountName", pa.string()),
        ("Tags", pa.string()),
        ("x_TokenType", pa.string()),
        ("x_Model", pa.string()),
        ("x_Provider", pa.string()),
        ("x_PriceVersion", pa.string()),
        ("x_ContractVersion", pa.string()),
    ],
    metadata={"focus_version": FOCUS_VERSION},
)
"""The columns, in the spec's alphabetical order, then Tollgate's own (``x_``)."""

_Key = tuple[date, str | None, str | None, str, str | None, str, str | None, str, str]


@dataclass
class _Row:
    quantity: int = 0
    billed: Decimal = Decimal(0)
    listed: Decimal = Decimal(0)


def focus_table(
    lake: Path,
    catalog: PriceCatalog,
    start: datetime,
    end: datetime,
    *,
    tenant_scope: str | None = None,
) -> pa.Table:
    """FOCUS rows of the calls ending in ``[start, end)``; see the module docstring.

    ``catalog`` gives the list price of calls a contract priced (the stream's catalog).
    """
    return focus_rows(lake_events(lake, start, end, tenant_scope=tenant_scope), catalog)


def focus_rows(events: Iterable[PricedEvent], catalog: PriceCatalog) -> pa.Table:
    rows: dict[_Key, _Row] = {}
    for event in events:
        listed = event if event.contract_version is None else catalog.at_list(event)
        model = event.request_model or event.response_model or "unknown"
        tags = json.dumps(dict(sorted(event.tags.items())), separators=(",", ":"))
        day = event.end_time.astimezone(UTC).date()
        for token_type in TOKEN_TYPES:
            quantity = _quantity(event, token_type)
            billed = getattr(event, _PARTS[token_type])
            at_list = getattr(listed, _PARTS[token_type])
            if token_type == "request":
                quantity = 1 if billed or at_list else 0
            if not quantity and not billed:
                continue
            key = (
                day,
                event.tenant,
                event.team,
                event.provider,
                event.contract_version,
                model,
                event.price_version,
                tags,
                token_type,
            )
            row = rows.get(key)
            if row is None:
                row = rows[key] = _Row()
            row.quantity += quantity
            row.billed += billed
            row.listed += at_list
    return _table(sorted(rows.items(), key=_order))


def _quantity(event: PricedEvent, token_type: str) -> int:
    if token_type == "input":
        return event.uncached_input_tokens
    if token_type == "cache_read":
        return event.cache_read_input_tokens
    if token_type == "cache_write":
        return event.cache_creation_input_tokens
    if token_type == "output":
        return event.output_tokens
    return 0


def _order(item: tuple[_Key, _Row]) -> tuple[object, ...]:
    key = item[0]
    return tuple(
        (value is None, value or "") if not isinstance(value, date) else value for value in key
    )


def _table(rows: list[tuple[_Key, _Row]]) -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in FOCUS_SCHEMA.names}

    def put(**values: object) -> None:
        for name, value in values.items():
            columns[name].append(value)

    for (day, tenant, team, provider, contract, model, version, tags, kind), row in rows:
        charge_start = datetime.combine(day, time(), UTC)
        month = date(day.year, day.month, 1)
        next_month = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        requests = kind == "request"
        pricing_quantity = Decimal(row.quantity) if requests else Decimal(row.quantity) / _MILLION
        company = _COMPANIES.get(provider, provider)
        put(
            BilledCost=row.billed,
            BillingAccountId=tenant,
            BillingAccountName=tenant,
            BillingCurrency="USD",
            BillingPeriodEnd=datetime.combine(next_month, time(), UTC),
            BillingPeriodStart=datetime.combine(month, time(), UTC),
            ChargeCategory="Usage",
            ChargeClass=None,
            ChargeDescription=f"{model}: {_DESCRIBED[kind]}",
            ChargeFrequency="Usage-Based",
            ChargePeriodEnd=charge_start + timedelta(days=1),
            ChargePeriodStart=charge_start,
            ConsumedQuantity=Decimal(row.quantity),
            ConsumedUnit="Requests" if requests else "Tokens",
            ContractedCost=row.billed,
            ContractedUnitPrice=_unit_price(row.billed, pricing_quantity),
            EffectiveCost=row.billed,
            InvoiceIssuerName=company,
            ListCost=row.listed,
            ListUnitPrice=_unit_price(row.listed, pricing_quantity),
            PricingCategory="Standard",
            PricingQuantity=pricing_quantity,
            PricingUnit="Requests" if requests else "1M Tokens",
            ProviderName=company,
            PublisherName=_PUBLISHERS.get(provider, company),
            ServiceCategory="AI and Machine Learning",
            ServiceName=_SERVICES.get(provider, f"{company} API"),
            ServiceSubcategory="Generative AI",
            SkuId=f"{provider}/{model}/{kind}",
            SkuPriceId=f"{contract or version}/{kind}",
            SubAccountId=team,
            SubAccountName=team,
            Tags=tags,
            x_TokenType=kind,
            x_Model=model,
            x_Provider=provider,
            x_PriceVersion=version,
            x_ContractVersion=contract,
        )
    return pa.Table.from_pydict(columns, schema=FOCUS_SCHEMA)


def _unit_price(cost: Decimal, quantity: Decimal) -> Decimal | None:
    if not quantity:
        return None
    return _WIDE.divide(cost, quantity).quantize(_PICO, ROUND_HALF_EVEN)
