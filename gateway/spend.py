"""Dollars for the gateway's own budget accounting, from the shared price catalog.

The stream prices every call for good; the gateway prices its own in-flight and
just-finished calls only to hold them against dollar budgets until the stream's state
covers them, so a burst cannot run far past a dollar limit either.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from tollgate.contract import UsageEvent
from tollgate.pricing import PriceCatalog

ZERO = Decimal(0)


class SpendEstimator:
    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = catalog

    def reserve_usd(
        self, provider: str | None, model: str, input_tokens: int, output_tokens: int, at: datetime
    ) -> Decimal:
        """What a call may cost at most: its input at the input rate, its output cap at
        the output rate, plus any per-call fee."""
        price = self.catalog.lookup(provider, model, at).price
        if price is None:
            return ZERO
        input_rate, _, _, output_rate, _ = price.per_token
        return input_rate * input_tokens + output_rate * output_tokens + price.request_usd

    def cost_usd(self, event: UsageEvent) -> Decimal:
        """What a finished call cost, priced as the stream will price it."""
        return self.catalog.price(event).cost_usd
