"""Negotiated prices: what a tenant, a provider's bill or a model really costs under contract.

A contract price overrides the list price for the calls it covers: of one tenant, one
provider, one model, or any combination (an unset one matches all). It gives a discount
off list (``discount_pct``) and/or its own rates per token kind, USD per million; a kind it
does not price is billed at list less the discount. Contracts carry effective dates like
list prices; when several cover a call, the most specific wins (tenant before model
before provider), and two of the same scope may not claim the same day.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from itertools import pairwise
from typing import NoReturn

from tollgate.errors import SettingsError
from tollgate.pricing.model_price import EXACT, TokenRates

RATE_KINDS = ("input", "cache_read", "cache_creation", "output", "cache_creation_1h", "reasoning")
"""The token kinds a contract may price, in ``TokenRates`` order."""
PICO_USD = Decimal("1e-12")
"""A discounted cost is rounded (half even) to the lake's 12 decimals, and only then."""
_HUNDRED = Decimal(100)
_Scope = tuple[str | None, str | None, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContractPrice:
    """One negotiated price over one period; see the module docstring."""

    tenant: str | None = None
    provider: str | None = None
    model: str | None = None
    effective_from: date
    effective_to: date | None = None
    discount_pct: Decimal = Decimal(0)
    input: Decimal | None = None
    cache_read: Decimal | None = None
    cache_creation: Decimal | None = None
    output: Decimal | None = None
    cache_creation_1h: Decimal | None = None
    reasoning: Decimal | None = None
    request_usd: Decimal | None = None
    """A per-call fee in USD; unset: the list fee less the discount."""
    keep: Decimal = field(init=False, repr=False, compare=False)
    """The share of list paid: 1 - discount_pct / 100."""

    def __post_init__(self) -> None:
        for name in ("tenant", "provider", "model"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                self._refuse(name, f"must be a non-empty string or null, got {value!r}")
        if not isinstance(self.effective_from, date):
            self._refuse("effective_from", f"must be a date, got {self.effective_from!r}")
        if self.effective_to is not None and (
            not isinstance(self.effective_to, date) or self.effective_to <= self.effective_from
        ):
            self._refuse("effective_to", "must be a date after effective_from")
        pct = self._amount("discount_pct", self.discount_pct)
        if pct > _HUNDRED:
            self._refuse("discount_pct", f"must be at most 100, got {self.discount_pct!r}")
        object.__setattr__(self, "discount_pct", pct)
        object.__setattr__(self, "keep", (_HUNDRED - pct) / _HUNDRED)
        for name in (*RATE_KINDS, "request_usd"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, self._amount(name, value))

    @property
    def scope(self) -> _Scope:
        return (self.tenant, self.provider, self.model)

    @property
    def version(self) -> str:
        """Names this contract on every event it prices."""
        scope = "/".join(part or "*" for part in self.scope)
        return f"contract/{scope}@{self.effective_from.isoformat()}"

    @property
    def specificity(self) -> tuple[bool, bool, bool]:
        return (self.tenant is not None, self.model is not None, self.provider is not None)

    def covers(self, tenant: str | None, provider: str, models: Iterable[str], day: date) -> bool:
        ended = self.effective_to is not None and day >= self.effective_to
        if self.effective_from > day or ended:
            return False
        if self.tenant is not None and self.tenant != tenant:
            return False
        if self.provider is not None and self.provider != provider:
            return False
        return self.model is None or self.model in models

    def rates(self, listed: TokenRates) -> TokenRates:
        """USD per token under this contract, from the list rates of the call."""
        return TokenRates(
            *(
                listed[i] * self.keep
                if getattr(self, kind) is None
                else getattr(self, kind).scaleb(-6, EXACT)
                for i, kind in enumerate(RATE_KINDS)
            )
        )

    def fee(self, listed_usd: Decimal) -> Decimal:
        return listed_usd * self.keep if self.request_usd is None else self.request_usd

    def _amount(self, name: str, value: object) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
            self._refuse(name, f"must be a number (not a float), got {value!r}")
        try:
            amount = Decimal(value)
        except InvalidOperation:
            self._refuse(name, f"must be a number, got {value!r}")
        if not amount.is_finite() or amount < 0:
            self._refuse(name, f"must be a finite, non-negative amount, got {value!r}")
        return amount

    def _refuse(self, name: str, problem: str) -> NoReturn:
        scope = "/".join(part or "*" for part in self.scope)
        raise SettingsError(f"contract price {scope}: `{name}` {problem}")


def pico(amount: Decimal) -> Decimal:
    """``amount`` to the lake's 12 decimals (half even)."""
    return amount.quantize(PICO_USD, ROUND_HALF_EVEN)


class Contracts:
    """Every contract of a catalog, and which one prices a call."""

    def __init__(self, contracts: Iterable[ContractPrice] = ()) -> None:
        by_scope: dict[_Scope, list[ContractPrice]] = {}
        for contract in contracts:
            by_scope.setdefault(contract.scope, []).append(contract)
        periods = {scope: _periods(entries) for scope, entries in by_scope.items()}
        self._scopes = sorted(
            periods.values(), key=lambda entries: entries[0].specificity, reverse=True
        )

    @property
    def all(self) -> tuple[ContractPrice, ...]:
        return tuple(contract for entries in self._scopes for contract in entries)

    def __bool__(self) -> bool:
        return bool(self._scopes)

    def find(
        self, tenant: str | None, provider: str, models: tuple[str, ...], day: date
    ) -> ContractPrice | None:
        """The most specific contract in force on ``day`` for the call, or None."""
        for entries in self._scopes:
            contract = _effective(entries, day)
            if contract is not None and contract.covers(tenant, provider, models, day):
                return contract
        return None


def _periods(entries: list[ContractPrice]) -> tuple[ContractPrice, ...]:
    """As list prices: a later entry supersedes an earlier open-ended one; two may not
    start on the same day, nor may one run past the next one's start."""
    ordered = sorted(entries, key=lambda contract: contract.effective_from)
    for earlier, later in pairwise(ordered):
        if earlier.effective_from == later.effective_from or (
            earlier.effective_to is not None and earlier.effective_to > later.effective_from
        ):
            raise SettingsError(f"{later.version}: overlaps {earlier.version}")
    return tuple(ordered)


def _effective(entries: tuple[ContractPrice, ...], day: date) -> ContractPrice | None:
    for contract in reversed(entries):
        if contract.effective_from <= day:
            end = contract.effective_to
            return contract if end is None or day < end else None
    return None
