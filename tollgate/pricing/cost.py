"""What a call cost, part by part, from its token counts and one catalog price.

Token counts follow OTel: ``input_tokens`` includes cache reads and cache writes, and
``output_tokens`` includes reasoning tokens, so each cached or reasoning token is priced
once, at its own rate; of the cache writes, the 1-hour ones are priced at their own rate.
A call whose input is above a long-context tier's threshold is priced wholly at that
tier. Arithmetic is exact ``Decimal`` (USD per million / 1,000,000 x tokens) in a context
that raises rather than round, so sums stay exact to the last digit. Under a negotiated
price each part is rounded once, half even, to the lake's 12 decimals (a discount of
1/3 has no exact decimal); the list cost beside it stays exact.
"""

from __future__ import annotations

from decimal import Decimal

from tollgate.contract.priced import ZERO_USD, PricedEvent
from tollgate.contract.usage import Status, UsageEvent
from tollgate.pricing.contracts import ContractPrice, pico
from tollgate.pricing.model_price import EXACT, PriceMatch, TokenRates


def apply_price(
    event: UsageEvent, match: PriceMatch, contract: ContractPrice | None = None
) -> PricedEvent:
    """Price ``event`` with ``match`` (and ``contract``, where one applies); without a
    price (no model, no fallback) it costs 0.

    The per-call fee is charged only when the call reached the model: status ok, or
    tokens were used. Refused calls carry no tokens, so they cost nothing, yet they are
    still priced so every event leaves the meter with a ``price_version``.
    """
    price = match.price
    if price is None:
        return PricedEvent.from_usage(
            event,
            input_cost_usd=ZERO_USD,
            cache_read_cost_usd=ZERO_USD,
            cache_creation_cost_usd=ZERO_USD,
            output_cost_usd=ZERO_USD,
            request_cost_usd=ZERO_USD,
            price_version=match.version,
            price_fallback=match.fallback,
        )
    reached_model = event.status == Status.OK or event.input_tokens or event.output_tokens
    listed = price.rates_for(event.input_tokens)
    fee = price.request_usd if reached_model else ZERO_USD
    parts = _parts(event, listed)
    list_cost = None
    if contract is not None:
        list_cost = EXACT.add(sum(parts, ZERO_USD), fee)
        parts = tuple(pico(part) for part in _parts(event, contract.rates(listed)))
        fee = pico(contract.fee(fee))
    input_cost, cache_read_cost, cache_creation_cost, output_cost = parts
    return PricedEvent.from_usage(
        event,
        input_cost_usd=input_cost,
        cache_read_cost_usd=cache_read_cost,
        cache_creation_cost_usd=cache_creation_cost,
        output_cost_usd=output_cost,
        request_cost_usd=fee,
        price_version=match.version,
        price_fallback=match.fallback,
        list_cost_usd=list_cost,
        contract_version=None if contract is None else contract.version,
    )


def _parts(event: UsageEvent, rates: TokenRates) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """Uncached input, cache reads, cache writes (5-minute and 1-hour), output."""
    cache_read = event.cache_read_input_tokens
    cache_creation = event.cache_creation_input_tokens
    one_hour = event.cache_creation_1h_input_tokens
    reasoning = event.reasoning_tokens
    output_cost = _usd(rates.output, event.output_tokens - reasoning)
    if reasoning:
        output_cost = EXACT.add(output_cost, _usd(rates.reasoning, reasoning))
    writes = _usd(rates.cache_creation, cache_creation - one_hour)
    if one_hour:
        writes = EXACT.add(writes, _usd(rates.cache_creation_1h, one_hour))
    return (
        _usd(rates.input, event.input_tokens - cache_read - cache_creation),
        _usd(rates.cache_read, cache_read),
        writes,
        output_cost,
    )


def _usd(per_token: Decimal, tokens: int) -> Decimal:
    return EXACT.multiply(per_token, tokens) if tokens else ZERO_USD
