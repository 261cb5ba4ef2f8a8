"""One model's price over one period: the unit of the versioned price catalog.

Prices are USD per million tokens, as providers publish them, and are held as ``Decimal``
so a catalog entry is exactly the number on the price page: no float ever touches money.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from typing import NoReturn

from tollgate.contract.priced import ZERO_USD
from tollgate.errors import SettingsError

OPENAI = "openai"
AZURE_OPENAI = "azure.ai.openai"
ANTHROPIC = "anthropic"

EXACT = Context(prec=60, traps=[Inexact, Rounded])
"""Money arithmetic that raises rather than round: every cost is exact or an error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """What one model costs from ``effective_from`` (inclusive) to ``effective_to`` (exclusive).

    Rates are USD per million tokens. Unset cache rates default to ``input`` and an unset
    ``reasoning`` rate defaults to ``output``, so once built every rate is a ``Decimal``.
    Invalid values raise ``SettingsError`` naming the model and the field, because prices
    come from files a person wrote.
    """

    provider: str | None
    """OTel ``gen_ai.provider.name`` (openai, azure.ai.openai, anthropic); None = any."""
    model: str
    """The exact model id, as the provider reports it or as the client asks for it."""
    effective_from: date
    effective_to: date | None = None
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    reasoning: Decimal | None = None
    request_usd: Decimal = ZERO_USD
    """A fee per call that reached the model, in USD (not per million)."""
    source: str | None = None
    """The catalog the price came from (e.g. ``litellm``); it prefixes ``version``."""
    per_token: tuple[Decimal, Decimal, Decimal, Decimal, Decimal] = field(
        init=False, repr=False, compare=False
    )
    """USD per single token: input, cache_read, cache_creation, output, reasoning.

    Worked out once (an exact shift of the decimal point), so pricing an event costs
    one multiplication per part."""

    def __post_init__(self) -> None:
        if self.provider is not None and (not isinstance(self.provider, str) or not self.provider):
            self._refuse("provider", f"must be a non-empty string or null, got {self.provider!r}")
        if not isinstance(self.model, str) or not self.model or len(self.model) > 200:
            self._refuse("model", f"must be a string of 1 to 200 characters, got {self.model!r}")
        if not _is_day(self.effective_from):
            self._refuse("effective_from", f"must be a date, got {self.effective_from!r}")
        if self.effective_to is not None:
            if not _is_day(self.effective_to):
                self._refuse("effective_to", f"must be a date or null, got {self.effective_to!r}")
            if self.effective_to <= self.effective_from:
                self._refuse(
                    "effective_to",
                    f"({self.effective_to}) must be after effective_from ({self.effective_from})",
                )
        for name in ("input", "output", "request_usd"):
            object.__setattr__(self, name, self._amount(name, getattr(self, name)))
        defaults = {
            "cache_read": self.input,
            "cache_creation": self.input,
            "reasoning": self.output,
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            amount = default if value is None else self._amount(name, value)
            object.__setattr__(self, name, amount)
        if len(self.version) > 256:
            self._refuse("model", "makes a price version longer than 256 characters")
        rates = (self.input, self.cache_read, self.cache_creation, self.output, self.reasoning)
        object.__setattr__(self, "per_token", tuple(rate.scaleb(-6, EXACT) for rate in rates))

    @property
    def label(self) -> str:
        """``provider/model``, with ``*`` for any provider."""
        return f"{self.provider or '*'}/{self.model}"

    @property
    def version(self) -> str:
        """Names this entry on every event it prices: ``[source/]provider/model@effective_from``."""
        prefix = f"{self.source}/" if self.source else ""
        return f"{prefix}{self.label}@{self.effective_from.isoformat()}"

    def is_effective(self, day: date) -> bool:
        return self.effective_from <= day and (self.effective_to is None or day < self.effective_to)

    def _amount(self, name: str, value: object) -> Decimal:
        if isinstance(value, float):
            self._refuse(name, f"must be a Decimal or a string, not the float {value!r}")
        if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
            self._refuse(name, f"must be a number, got {value!r}")
        try:
            amount = Decimal(value)
        except InvalidOperation:
            self._refuse(name, f"must be a number, got {value!r}")
        if not amount.is_finite() or amount < 0:
            self._refuse(name, f"must be a finite, non-negative amount, got {value!r}")
        return amount

    def _refuse(self, name: str, problem: str) -> NoReturn:
        raise SettingsError(f"price of {self.provider or '*'}/{self.model}: `{name}` {problem}")


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """The answer of a catalog lookup: which price applies, and how to cite it."""

    price: ModelPrice | None
    """None when nothing prices the call: it had no model, or no fallback is configured."""
    version: str
    """Goes to ``PricedEvent.price_version``."""
    fallback: bool
    """True when the model was unknown and the fallback price (or none) was used."""


NO_MODEL = PriceMatch(None, "none", False)
"""For calls refused before a model could be read: they cost nothing and nothing priced them."""


def _is_day(value: object) -> bool:
    return isinstance(value, date) and not isinstance(value, datetime)
