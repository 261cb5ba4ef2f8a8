"""The versioned price catalog: which price applied to a call, on the day it was made.

Entries carry effective dates and an event is priced by the entry in force at its own
``time``, so replaying history re-prices it exactly as it was billed. Lookups are cached
by (provider, model, day): the stream prices every event, and the answer only changes
when the day does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from itertools import pairwise

from tollgate.contract.priced import PricedEvent
from tollgate.contract.usage import UsageEvent
from tollgate.errors import SettingsError
from tollgate.pricing.contracts import ContractPrice, Contracts
from tollgate.pricing.cost import apply_price
from tollgate.pricing.model_price import AZURE_OPENAI, NO_MODEL, OPENAI, ModelPrice, PriceMatch

_SNAPSHOT_DATE = re.compile(r"-(\d{4})-?(\d{2})-?(\d{2})$")
"""The date of a dated model id: ``-2024-08-06`` or ``-20250514``."""
_MODEL_SUFFIX = re.compile(
    r"-(?:"
    r"\d{4}-\d{2}-\d{2}"  # gpt-4o-2024-08-06
    r"|20\d{6}"  # claude-sonnet-4-20250514
    r"|latest"  # claude-3-5-haiku-latest
    r"|(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"  # gpt-4-0613: month and day
    r")$"
)
_CACHE_LIMIT = 100_000
"""Model names come from clients; a bounded cache keeps a flood of odd names harmless."""

_Key = tuple[str | None, str]


def strip_model_suffix(model: str) -> str:
    """``gpt-4o-2024-08-06`` -> ``gpt-4o``: drop one trailing date or ``-latest`` suffix.

    Only date-like suffixes go, so ``gpt-4o-mini`` stays itself and never falls to gpt-4o.
    """
    return _MODEL_SUFFIX.sub("", model, count=1)


def snapshot_date(model: str) -> date | None:
    """The date in a dated model id (``gpt-4o-2024-05-13`` -> 2024-05-13), else None."""
    found = _SNAPSHOT_DATE.search(model)
    if found is None:
        return None
    try:
        return date(*(int(part) for part in found.groups()))
    except ValueError:
        return None


def family_covers(model: str, family: tuple[ModelPrice, ...]) -> bool:
    """May the dated (or ``-latest``) id ``model`` be priced as its family?

    Only when the family's prices began on or before the snapshot's date: an older
    snapshot may have had its own, higher, price (``gpt-4o-2024-05-13`` is $5/$15 where
    ``gpt-4o`` is $2.50/$10), so it needs an entry of its own or takes the fallback. A
    ``-latest`` alias is the family itself; a month-and-day suffix (``gpt-4-0613``) says
    no year, so it is never taken for its family.
    """
    if model.endswith("-latest"):
        return True
    taken = snapshot_date(model)
    return taken is not None and bool(family) and family[0].effective_from <= taken


class PriceCatalog:
    """Prices by (provider, model) over time, plus a fallback so no call goes unpriced."""

    def __init__(
        self,
        prices: Iterable[ModelPrice],
        fallback: ModelPrice | None = None,
        contracts: Iterable[ContractPrice] = (),
    ) -> None:
        grouped: dict[_Key, list[ModelPrice]] = {}
        for price in prices:
            grouped.setdefault((price.provider, price.model), []).append(price)
        self._periods = {key: _periods(entries) for key, entries in grouped.items()}
        self._fallback = fallback
        self._fallback_match = (
            PriceMatch(fallback, f"fallback@{fallback.effective_from.isoformat()}", True)
            if fallback is not None
            else PriceMatch(None, "none", True)
        )
        self.contracts = Contracts(contracts)
        self._known: dict[tuple[str | None, str, date], PriceMatch | None] = {}
        self._by_event: dict[tuple[str, str | None, str | None, date], PriceMatch] = {}

    @property
    def prices(self) -> tuple[ModelPrice, ...]:
        return tuple(price for periods in self._periods.values() for price in periods)

    @property
    def fallback(self) -> ModelPrice | None:
        return self._fallback

    def __len__(self) -> int:
        return sum(len(periods) for periods in self._periods.values())

    def lookup(self, provider: str | None, model: str, at: datetime) -> PriceMatch:
        """The price of ``model`` at instant ``at``; the fallback when the model is unknown.

        Tries, in order: (provider, model), (any provider, model), OpenAI's price for an
        Azure OpenAI call, then the same three with a date suffix stripped from the model,
        where the family's prices cover the snapshot (``family_covers``).
        """
        return self._match_known(provider, model, _utc_day(at)) or self._fallback_match

    def match(self, event: UsageEvent) -> PriceMatch:
        """The price for ``event``: its response model when the catalog knows it, else the
        requested one, else the fallback; calls without any model match nothing."""
        day = _utc_day(event.time)
        key = (event.provider, event.response_model, event.request_model, day)
        found = self._by_event.get(key)
        if found is None:
            found = self._match_event(event, day)
            if len(self._by_event) >= _CACHE_LIMIT:
                self._by_event.clear()
            self._by_event[key] = found
        return found

    def price(self, event: UsageEvent) -> PricedEvent:
        """``event`` with its cost, at the prices in force when it happened: its list
        price, or the negotiated price that covers it (the list cost kept beside it)."""
        match = self.match(event)
        return apply_price(event, match, self.contract(event, match))

    def at_list(self, event: UsageEvent) -> PricedEvent:
        """``event`` at its list price, whatever contract covers it."""
        return apply_price(event, self.match(event))

    def contract(self, event: UsageEvent, match: PriceMatch) -> ContractPrice | None:
        """The negotiated price for ``event`` (priced by ``match``), if one covers it; the
        fallback is a guess, not a list price, so no contract discounts it."""
        if not self.contracts or match.price is None or match.fallback:
            return None
        models = tuple(
            m for m in (match.price.model, event.response_model, event.request_model) if m
        )
        return self.contracts.find(event.tenant, event.provider, models, _utc_day(event.time))

    def _match_event(self, event: UsageEvent, day: date) -> PriceMatch:
        models = [m for m in (event.response_model, event.request_model) if m is not None]
        if not models:
            return NO_MODEL
        for model in models:
            found = self._match_known(event.provider, model, day)
            if found is not None:
                return found
        return self._fallback_match

    def _match_known(self, provider: str | None, model: str, day: date) -> PriceMatch | None:
        key = (provider, model, day)
        try:
            return self._known[key]
        except KeyError:
            pass
        found = None
        for candidate in _candidates(provider, model):
            periods = self._periods.get(candidate, ())
            if candidate[1] != model and not family_covers(model, periods):
                continue
            price = _effective(periods, day)
            if price is not None:
                found = PriceMatch(price, price.version, False)
                break
        if len(self._known) >= _CACHE_LIMIT:
            self._known.clear()
        self._known[key] = found
        return found


def price(event: UsageEvent, catalog: PriceCatalog) -> PricedEvent:
    """``event`` priced by ``catalog`` at the prices in force at ``event.time``."""
    return catalog.price(event)


def _candidates(provider: str | None, model: str) -> Iterator[_Key]:
    stripped = strip_model_suffix(model)
    for name in (model,) if stripped == model else (model, stripped):
        yield provider, name
        yield None, name
        if provider == AZURE_OPENAI:
            # Azure bills at OpenAI's list prices unless the catalog says otherwise.
            yield OPENAI, name


def _periods(entries: list[ModelPrice]) -> tuple[ModelPrice, ...]:
    """Order one model's prices by date; two entries may never claim the same day."""
    ordered = sorted(entries, key=lambda price: price.effective_from)
    for earlier, later in pairwise(ordered):
        if earlier.effective_from == later.effective_from:
            raise SettingsError(
                f"price of {later.label}: two entries are effective from {later.effective_from}"
            )
        if earlier.effective_to is not None and earlier.effective_to > later.effective_from:
            raise SettingsError(
                f"price of {later.label}: the entry from {earlier.effective_from} runs to "
                f"{earlier.effective_to}, past the next entry's effective_from "
                f"({later.effective_from})"
            )
    return tuple(ordered)


def _effective(periods: tuple[ModelPrice, ...], day: date) -> ModelPrice | None:
    """A later entry supersedes an earlier open-ended one; ``effective_to`` leaves a gap."""
    for price in reversed(periods):
        if price.effective_from <= day:
            return price if price.is_effective(day) else None
    return None


def _utc_day(at: datetime) -> date:
    """Prices change at midnight UTC; a naive instant is taken to be UTC already."""
    if at.tzinfo is None or at.tzinfo is UTC:
        return at.date()
    return at.astimezone(UTC).date()
