"""The priced event: a usage event plus what it cost, and which prices said so.

Money is ``Decimal`` end to end (JSON strings on the wire) so totals add up to the cent
however many events are summed. ``cost_usd`` is exactly the sum of its parts; the parts
follow the OTel token split: uncached input, cache reads, cache writes, output
(reasoning included), and a per-call fee.
"""

from __future__ import annotations

from decimal import Decimal

from tollgate.contract.record import Name, invalid, require_non_negative_usd
from tollgate.contract.usage import UsageEvent

ZERO_USD = Decimal(0)


class PricedEvent(UsageEvent, tag=2, kw_only=True):
    """A usage event priced by the stream from the versioned price catalog.

    Version 2 carries version 2 of the usage event, ``list_cost_usd`` and
    ``contract_version``; version 1 records are still read (``PricedEventV1``).
    """

    input_cost_usd: Decimal = ZERO_USD
    """Uncached input tokens at the input rate."""
    cache_read_cost_usd: Decimal = ZERO_USD
    cache_creation_cost_usd: Decimal = ZERO_USD
    output_cost_usd: Decimal = ZERO_USD
    """Output tokens, reasoning included (at the reasoning rate where one is set)."""
    request_cost_usd: Decimal = ZERO_USD
    """A per-call fee, where the provider charges one."""
    cost_usd: Decimal = ZERO_USD
    price_version: Name
    """The catalog entry that priced this event, so history can be re-priced."""
    price_fallback: bool = False
    """True when the model was not in the catalog and the fallback price was used."""
    list_cost_usd: Decimal | None = None
    """What the call cost at the list price ``price_version`` names, when a negotiated
    price (``contract_version``) priced it; None when the list price did, so the list cost
    is ``cost_usd`` (``listed_cost_usd`` says it either way)."""
    contract_version: Name | None = None
    """The negotiated price that priced the parts and ``cost_usd`` (``contract/...@date``),
    or None when the list price did."""

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = {
            "input_cost_usd": self.input_cost_usd,
            "cache_read_cost_usd": self.cache_read_cost_usd,
            "cache_creation_cost_usd": self.cache_creation_cost_usd,
            "output_cost_usd": self.output_cost_usd,
            "request_cost_usd": self.request_cost_usd,
            "cost_usd": self.cost_usd,
        }
        for field, value in parts.items():
            require_non_negative_usd(self, field, value)
        require_non_negative_usd(self, "list_cost_usd", self.list_cost_usd)
        total = sum(value for field, value in parts.items() if field != "cost_usd")
        if total != self.cost_usd:
            invalid(self, "cost_usd", f"is {self.cost_usd} but its parts add up to {total}")

    @property
    def listed_cost_usd(self) -> Decimal:
        """The call's cost at list price, whichever price billed it."""
        return self.cost_usd if self.list_cost_usd is None else self.list_cost_usd

    @classmethod
    def from_usage(
        cls,
        usage: UsageEvent,
        *,
        input_cost_usd: Decimal,
        cache_read_cost_usd: Decimal,
        cache_creation_cost_usd: Decimal,
        output_cost_usd: Decimal,
        request_cost_usd: Decimal,
        price_version: str,
        price_fallback: bool = False,
        list_cost_usd: Decimal | None = None,
        contract_version: str | None = None,
    ) -> PricedEvent:
        """Price ``usage``; ``cost_usd`` is computed here so it always equals its parts."""
        fields = {f: getattr(usage, f) for f in UsageEvent.__struct_fields__}
        cost_usd = (
            input_cost_usd
            + cache_read_cost_usd
            + cache_creation_cost_usd
            + output_cost_usd
            + request_cost_usd
        )
        return cls(
            **fields,
            input_cost_usd=input_cost_usd,
            cache_read_cost_usd=cache_read_cost_usd,
            cache_creation_cost_usd=cache_creation_cost_usd,
            output_cost_usd=output_cost_usd,
            request_cost_usd=request_cost_usd,
            cost_usd=cost_usd,
            price_version=price_version,
            price_fallback=price_fallback,
            list_cost_usd=list_cost_usd,
            contract_version=contract_version,
        )


class PricedEventV1(PricedEvent, tag=1, kw_only=True):
    """A priced event as version 1 wrote it: none of the fields version 2 added. Read,
    never written."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("token_budget", "list_cost_usd", "contract_version"):
            if getattr(self, name) is not None:
                invalid(self, name, "is not a field of schema_version 1")
        if self.cache_creation_1h_input_tokens:
            invalid(self, "cache_creation_1h_input_tokens", "is not a field of schema_version 1")
