"""Reading a price catalog from a file: Tollgate's YAML, or LiteLLM's community JSON.

The YAML format is documented at the top of ``default_prices.yaml``, the catalog shipped
with Tollgate. YAML floats are read as their literal text, so ``2.50`` becomes exactly
``Decimal("2.50")`` and never passes through a binary float.
"""

from __future__ import annotations

from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tollgate.errors import SettingsError
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.contracts import RATE_KINDS, ContractPrice
from tollgate.pricing.litellm import load_litellm
from tollgate.pricing.model_price import ModelPrice, PriceTier

DEFAULT_PRICES = "default_prices.yaml"
"""The catalog shipped as package data of ``tollgate.pricing``."""

_FALLBACK_MODEL = "*"
_PRICE_KEYS = frozenset(
    {
        "effective_from",
        "effective_to",
        "input",
        "output",
        "cache_read",
        "cache_creation",
        "cache_creation_1h",
        "reasoning",
        "request_usd",
        "tiers",
    }
)
_ENTRY_KEYS = _PRICE_KEYS | {"provider", "model", "aliases"}
_TIER_KEYS = frozenset(
    {
        "above_input_tokens",
        "input",
        "output",
        "cache_read",
        "cache_creation",
        "cache_creation_1h",
        "reasoning",
    }
)
_CONTRACT_KEYS = frozenset(
    {"tenant", "provider", "model", "effective_from", "effective_to", "discount_pct", "request_usd"}
    | set(RATE_KINDS)
)


class _PriceLoader(yaml.SafeLoader):
    """A safe loader that keeps YAML floats as text, for ``Decimal`` to read exactly."""


_PriceLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: loader.construct_scalar(node)
)


def load_catalog(path: Path | None = None) -> PriceCatalog:
    """The catalog in ``path``, or the shipped one when ``path`` is None.

    ``.yaml``/``.yml`` files are read as Tollgate's format; ``.json`` files as LiteLLM's
    ``model_prices_and_context_window.json``, with the shipped fallback price added so an
    unknown model is still priced. Any problem raises ``SettingsError`` naming the file.
    """
    if path is None:
        text = resources.files("tollgate.pricing").joinpath(DEFAULT_PRICES).read_text("utf-8")
        return read_catalog_yaml(text, source=f"tollgate.pricing/{DEFAULT_PRICES}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_litellm(path, fallback=load_catalog().fallback)
    if suffix not in (".yaml", ".yml"):
        raise SettingsError(f"price catalog {path}: expected a .yaml, .yml or .json file")
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise SettingsError(f"price catalog {path}: cannot be read ({exc})") from exc
    return read_catalog_yaml(text, source=str(path))


def read_catalog_yaml(text: str, *, source: str = "<yaml>") -> PriceCatalog:
    """Parse Tollgate's YAML catalog format; ``source`` names it in error messages."""
    try:
        document = yaml.load(text, Loader=_PriceLoader)
    except yaml.YAMLError as exc:
        raise SettingsError(f"price catalog {source}: not valid YAML ({exc})") from exc
    if not isinstance(document, dict):
        raise SettingsError(f"price catalog {source}: expected a mapping with `prices`")
    unknown = sorted(set(document) - {"prices", "fallback", "contracts"})
    if unknown:
        raise SettingsError(f"price catalog {source}: unknown top-level key `{unknown[0]}`")
    entries = document.get("prices") or []
    if not isinstance(entries, list):
        raise SettingsError(f"price catalog {source}: `prices` must be a list")
    try:
        prices = [
            price
            for index, entry in enumerate(entries)
            for price in _entry_prices(entry, f"prices[{index}]")
        ]
        fallback = document.get("fallback")
        contracts = document.get("contracts") or []
        if not isinstance(contracts, list):
            raise SettingsError("`contracts` must be a list")
        return PriceCatalog(
            prices,
            None if fallback is None else _fallback_price(fallback, "fallback"),
            [_contract(entry, f"contracts[{index}]") for index, entry in enumerate(contracts)],
        )
    except SettingsError as exc:
        raise SettingsError(f"price catalog {source}: {exc}") from exc


def _entry_prices(entry: object, where: str) -> list[ModelPrice]:
    """One YAML entry: a model and its aliases, all at the same prices."""
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping, got {entry!r}")
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise SettingsError(f"{where}: `model` is required and must be a string")
    _refuse_unknown_keys(entry, _ENTRY_KEYS, f"{where} ({model})")
    aliases = entry.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise SettingsError(f"{where} ({model}): `aliases` must be a list of model ids")
    return [
        _model_price(entry, provider=entry.get("provider"), model=name, where=f"{where} ({model})")
        for name in (model, *aliases)
    ]


def _fallback_price(entry: object, where: str) -> ModelPrice:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping, got {entry!r}")
    _refuse_unknown_keys(entry, _PRICE_KEYS, where)
    return _model_price(entry, provider=None, model=_FALLBACK_MODEL, where=where)


def _model_price(entry: dict[str, Any], *, provider: Any, model: str, where: str) -> ModelPrice:
    for required in ("effective_from", "input", "output"):
        if entry.get(required) is None:
            raise SettingsError(f"{where}: `{required}` is required")
    return ModelPrice(
        provider=provider,
        model=model,
        effective_from=_day(entry["effective_from"], "effective_from", model),
        effective_to=_day(entry.get("effective_to"), "effective_to", model),
        input=entry["input"],
        output=entry["output"],
        cache_read=entry.get("cache_read"),
        cache_creation=entry.get("cache_creation"),
        cache_creation_1h=entry.get("cache_creation_1h"),
        reasoning=entry.get("reasoning"),
        tiers=_tiers(entry.get("tiers"), where),
        request_usd=entry.get("request_usd", 0),
    )


def _tiers(value: Any, where: str) -> tuple[PriceTier, ...]:
    """``tiers: [{above_input_tokens: 200000, input: 6.00, ...}]``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SettingsError(f"{where}: `tiers` must be a list")
    tiers = []
    for index, tier in enumerate(value):
        if not isinstance(tier, dict) or "above_input_tokens" not in tier:
            raise SettingsError(f"{where}: tiers[{index}] needs `above_input_tokens`")
        _refuse_unknown_keys(tier, _TIER_KEYS, f"{where} tiers[{index}]")
        tiers.append(PriceTier(**tier))
    return tuple(tiers)


def _contract(entry: object, where: str) -> ContractPrice:
    """One negotiated price; see ``tollgate.pricing.contracts``."""
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping, got {entry!r}")
    _refuse_unknown_keys(entry, _CONTRACT_KEYS, where)
    if entry.get("effective_from") is None:
        raise SettingsError(f"{where}: `effective_from` is required")
    name = "/".join(str(entry.get(k) or "*") for k in ("tenant", "provider", "model"))
    fields = dict(entry)
    for key in ("effective_from", "effective_to"):
        fields[key] = _day(entry.get(key), key, f"contract {name}")
    try:
        return ContractPrice(**fields)
    except SettingsError as exc:
        raise SettingsError(f"{where}: {exc}") from exc


def _day(value: Any, field: str, model: str) -> Any:
    """YAML reads ``2024-08-06`` as a date already; quoted dates are accepted too."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise SettingsError(
                f"price of {model}: `{field}` must be a date (YYYY-MM-DD), got {value!r}"
            ) from None
    return value


def _refuse_unknown_keys(entry: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(entry) - allowed)
    if unknown:
        raise SettingsError(f"{where}: unknown field `{unknown[0]}`")
