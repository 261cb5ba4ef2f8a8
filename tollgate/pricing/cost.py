"""What a call cost, part by part, from its token counts and one catalog price.

Token counts follow OTel: ``input_tokens`` includes cache reads and cache writes, and
``output_tokens`` includes reasoning tokens, so each cached or reasoning token is priced
once, at its own rate. Arithmetic is exact ``Decimal`` (USD per million / 1,000,000 x
tokens) in a context that raises rather than round, so sums stay exact to the last digit.
"""

from __future__ import annotations

from decimal import Decimal

from tollgate.contract.priced import ZERO_USD, PricedEvent
from tollgate.contract.usage import Status, UsageEvent
from tollgate.pricing.model_price import EXACT, PriceMatch


def apply_price(event: UsageEvent, match: PriceMatch) -> PricedEvent:
    """Price ``event`` with ``match``; without a price (no model, no fallback) it costs 0.

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
    input_rate, cache_read_rate, cache_creation_rate, output_rate, reasoning_rate = price.per_token
    cache_read = event.cache_read_input_tokens
    cache_creation = event.cache_creation_input_tokens
    reasoning = event.reasoning_tokens
    output_cost = _usd(output_rate, event.output_tokens - reasoning)
    if reasoning:
        output_cost = EXACT.add(output_cost, _usd(reasoning_rate, reasoning))
    reached_model = event.status == Status.OK or event.input_tokens or event.output_tokens
    return PricedEvent.from_usage(
        event,
        input_cost_usd=_usd(input_rate, event.input_tokens - cache_read - cache_creation),
        cache_read_cost_usd=_usd(cache_read_rate, cache_read),
        cache_creation_cost_usd=_usd(cache_creation_rate, cache_creation),
        output_cost_usd=output_cost,
        request_cost_usd=price.request_usd if reached_model else ZERO_USD,
        price_version=match.version,
        price_fallback=match.fallback,
    )


def _usd(per_token: Decimal, tokens: int) -> Decimal:
    return EXACT.multiply(per_token, tokens) if tokens else ZERO_USD
