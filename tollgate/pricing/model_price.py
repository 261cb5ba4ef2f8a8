"""One model's price over one period: the unit of the versioned price catalog.

Prices are USD per million tokens, as providers publish them, and are held as ``Decimal``
so a catalog entry is exactly the number on the price page: no float ever touches money.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from typing import NamedTuple, NoReturn

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

    Rates are USD per million tokens. Unset cache rates default to ``input``, an unset
    1-hour cache-write rate to the (5-minute) ``cache_creation`` one, and an unset
    ``reasoning`` rate to ``output``, so once built every rate is a ``Decimal``.
    ``tiers`` price a whole call whose input is larger than a threshold (long context).
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
    cache_creation_1h: Decimal | None = None
    """Tokens written to the cache for one hour (Anthropic: 2x input, vs 1.25x for 5 min)."""
    tiers: tuple[PriceTier, ...] = ()
    """Long-context prices, by input size; see ``PriceTier``."""
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
    cache_creation_1h_per_token: Decimal = field(init=False, repr=False, compare=False)
    base_rates: TokenRates = field(init=False, repr=False, compare=False)
    """``per_token`` with the 1-hour cache-write rate: what ``rates_for`` gives below every
    tier, built once."""

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
        one_hour = self.cache_creation_1h
        one_hour = (
            self.cache_creation if one_hour is None else self._amount("cache_creation_1h", one_hour)
        )
        object.__setattr__(self, "cache_creation_1h", one_hour)
        self._check_tiers()
        if len(self.version) > 256:
            self._refuse("model", "makes a price version longer than 256 characters")
        rates = (self.input, self.cache_read, self.cache_creation, self.output, self.reasoning)
        object.__setattr__(self, "per_token", tuple(rate.scaleb(-6, EXACT) for rate in rates))
        one_hour_per_token = self.cache_creation_1h.scaleb(-6, EXACT)
        object.__setattr__(self, "cache_creation_1h_per_token", one_hour_per_token)
        object.__setattr__(
            self,
            "base_rates",
            TokenRates(*self.per_token[:4], one_hour_per_token, self.per_token[4]),
        )

    def rates_for(self, input_tokens: int) -> TokenRates:
        """USD per token for a call with ``input_tokens`` (cached ones included): the
        highest tier whose threshold the call is above, else the base rates."""
        for tier in reversed(self.tiers):
            if input_tokens > tier.above_input_tokens:
                return tier.per_token
        return self.base_rates

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

    def _check_tiers(self) -> None:
        tiers = tuple(self.tiers)
        if not all(isinstance(tier, PriceTier) for tier in tiers):
            self._refuse("tiers", "must be a list of price tiers")
        thresholds = [tier.above_input_tokens for tier in tiers]
        if thresholds != sorted(set(thresholds)):
            self._refuse("tiers", f"thresholds must rise, each once, got {thresholds}")
        base = {
            "input": self.input,
            "cache_read": self.cache_read,
            "cache_creation": self.cache_creation,
            "cache_creation_1h": self.cache_creation_1h,
            "output": self.output,
            "reasoning": self.reasoning,
        }
        for tier in tiers:
            rates = {}
            for name, default in base.items():
                value = getattr(tier, name)
                if value is not None:
                    value = self._amount(f"tiers.{name}", value)
                    object.__setattr__(tier, name, value)
                rates[name] = default if value is None else value
            if tier.reasoning is None and self.reasoning == self.output:
                rates["reasoning"] = rates["output"]  # reasoning tokens are output tokens
            object.__setattr__(tier, "per_token", _per_token(**rates))
        object.__setattr__(self, "tiers", tiers)

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


class TokenRates(NamedTuple):
    """USD per single token of each kind, for one call."""

    input: Decimal
    cache_read: Decimal
    cache_creation: Decimal
    """5-minute cache writes (and writes whose duration was not reported)."""
    output: Decimal
    cache_creation_1h: Decimal
    reasoning: Decimal


def _per_token(
    *,
    input: Decimal,
    cache_read: Decimal,
    cache_creation: Decimal,
    cache_creation_1h: Decimal,
    output: Decimal,
    reasoning: Decimal,
) -> TokenRates:
    def one(rate: Decimal) -> Decimal:
        return rate.scaleb(-6, EXACT)

    return TokenRates(
        one(input),
        one(cache_read),
        one(cache_creation),
        one(output),
        one(cache_creation_1h),
        one(reasoning),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTier:
    """Prices for a whole call whose input (cached tokens included) is above
    ``above_input_tokens``: Anthropic and Google bill every token of such a call at the
    long-context rate. A rate left unset keeps the base price's rate of that kind, but
    reasoning, which follows the tier's output rate unless the base prices it apart."""

    above_input_tokens: int
    input: Decimal | None = None
    output: Decimal | None = None
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    cache_creation_1h: Decimal | None = None
    reasoning: Decimal | None = None
    per_token: TokenRates = field(init=False, repr=False, compare=False)
    """Filled in by the ``ModelPrice`` that holds the tier."""

    def __post_init__(self) -> None:
        threshold = self.above_input_tokens
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise SettingsError(
                f"price tier: `above_input_tokens` must be a whole number, got {threshold!r}"
            )


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
