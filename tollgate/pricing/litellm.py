"""Import of LiteLLM's community price list, ``model_prices_and_context_window.json``.

LiteLLM prices per token as JSON floats; Tollgate prices per million tokens as Decimal.
Each number is read from its decimal text (``Decimal(str(x))``, or straight from the
file's text), never from its binary value, so ``2.5e-06`` becomes exactly ``2.5``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tollgate.errors import SettingsError
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.model_price import ANTHROPIC, AZURE_OPENAI, OPENAI, ModelPrice, PriceTier

EPOCH = date(1970, 1, 1)
SOURCE = "litellm"
"""Prefixes the version of every imported price: ``litellm/openai/gpt-4o@1970-01-01``."""

PROVIDERS = {"openai": OPENAI, "azure": AZURE_OPENAI, "anthropic": ANTHROPIC}
"""LiteLLM provider names -> OTel ``gen_ai.provider.name``; other names are kept as they are."""

_RATES = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_creation": "cache_creation_input_token_cost",
    "cache_creation_1h": "cache_creation_input_token_cost_above_1hr",
    "reasoning": "output_cost_per_reasoning_token",
}
_FIELDS = {name: field for field, name in _RATES.items()}
_TIERED = re.compile(r"^(?P<rate>.+)_above_(?P<thousands>\d+)k_tokens$")
"""``input_cost_per_token_above_200k_tokens``: the rate of a call above 200,000 input tokens."""
_MILLION = Decimal(1_000_000)


def load_litellm(
    path: Path, *, effective_from: date = EPOCH, fallback: ModelPrice | None = None
) -> PriceCatalog:
    """A catalog from a LiteLLM JSON file, every price effective from ``effective_from``."""
    try:
        table = json.loads(path.read_text("utf-8"), parse_float=Decimal)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"price catalog {path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(table, dict):
        raise SettingsError(f"price catalog {path}: expected a JSON object keyed by model")
    try:
        return PriceCatalog(litellm_prices(table, effective_from=effective_from), fallback)
    except SettingsError as exc:
        raise SettingsError(f"price catalog {path}: {exc}") from exc


def litellm_prices(table: Mapping[str, Any], *, effective_from: date = EPOCH) -> list[ModelPrice]:
    """The token-priced entries of a LiteLLM table; the first entry for a model wins.

    ``sample_spec`` and entries without both input and output token costs (images,
    audio seconds, ...) are skipped. A ``provider/`` prefix on a key becomes the provider.
    """
    prices: dict[tuple[str | None, str], ModelPrice] = {}
    for key, spec in table.items():
        if key == "sample_spec" or not isinstance(spec, Mapping):
            continue
        price = _price(key, spec, effective_from)
        if price is not None:
            prices.setdefault((price.provider, price.model), price)
    return list(prices.values())


def _price(key: str, spec: Mapping[str, Any], effective_from: date) -> ModelPrice | None:
    if spec.get("output_cost_per_token") is None and spec.get("mode") == "embedding":
        spec = {**spec, "output_cost_per_token": 0}
    if spec.get("input_cost_per_token") is None or spec.get("output_cost_per_token") is None:
        return None
    raw_provider = spec.get("litellm_provider")
    provider = PROVIDERS.get(raw_provider, raw_provider) if raw_provider else None
    model = _model_name(key, raw_provider)
    rates = {
        field: _per_million(spec[name], key, name)
        for field, name in _RATES.items()
        if spec.get(name) is not None
    }
    return ModelPrice(
        provider=provider,
        model=model,
        effective_from=effective_from,
        source=SOURCE,
        tiers=_tiers(key, spec),
        **rates,
    )


def _tiers(key: str, spec: Mapping[str, Any]) -> tuple[PriceTier, ...]:
    """Long-context rates (``*_above_200k_tokens``), one tier per threshold."""
    tiers: dict[int, dict[str, Decimal]] = {}
    for name, value in spec.items():
        tiered = _TIERED.match(name)
        if tiered is None or value is None or tiered.group("rate") not in _FIELDS:
            continue
        threshold = int(tiered.group("thousands")) * 1000
        field = _FIELDS[tiered.group("rate")]
        tiers.setdefault(threshold, {})[field] = _per_million(value, key, name)
    return tuple(
        PriceTier(above_input_tokens=threshold, **rates)
        for threshold, rates in sorted(tiers.items())
    )


def _model_name(key: str, raw_provider: str | None) -> str:
    """``azure/gpt-4o`` -> ``gpt-4o``: the prefix says who serves it, not what it is."""
    prefix, slash, rest = key.partition("/")
    if slash and rest and (prefix == raw_provider or prefix in PROVIDERS):
        return rest
    return key


def _per_million(value: Any, key: str, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise SettingsError(f"price of {key}: `{field}` must be a number, got {value!r}")
    try:
        per_token = Decimal(str(value))
    except InvalidOperation:
        raise SettingsError(f"price of {key}: `{field}` must be a number, got {value!r}") from None
    return _tidy(per_token * _MILLION)


def _tidy(amount: Decimal) -> Decimal:
    """``2.5000000`` -> ``2.5``; whole numbers keep a plain exponent (``10``, not ``1E+1``)."""
    if not amount.is_finite():
        return amount
    normal = amount.normalize()
    return normal.quantize(Decimal(1)) if normal.as_tuple().exponent > 0 else normal
