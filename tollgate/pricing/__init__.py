"""The versioned price catalog: what each AI call cost, at the prices of its day.

The stream prices every usage event with ``PriceCatalog.price``; the catalog comes from
``load_catalog`` (Tollgate YAML, LiteLLM JSON, or the shipped ``default_prices.yaml``).
"""

from tollgate.pricing.catalog import PriceCatalog, price, strip_model_suffix
from tollgate.pricing.catalog_file import DEFAULT_PRICES, load_catalog, read_catalog_yaml
from tollgate.pricing.cost import apply_price
from tollgate.pricing.litellm import litellm_prices, load_litellm
from tollgate.pricing.model_price import ModelPrice, PriceMatch

__all__ = [
    "DEFAULT_PRICES",
    "ModelPrice",
    "PriceCatalog",
    "PriceMatch",
    "apply_price",
    "litellm_prices",
    "load_catalog",
    "load_litellm",
    "price",
    "read_catalog_yaml",
    "strip_model_suffix",
]
