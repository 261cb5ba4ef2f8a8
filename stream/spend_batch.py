"""Priced events summed per (who, what, minute) before the anomaly detector sees them.

The detector keeps baselines for many subjects; feeding it every call costs more than
metering the call. A batch is summed first, so it sees a few hundred spends instead of a
thousand calls. Sums are exact (Decimal) and keep the latest end time they cover.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

import msgspec

from tollgate.contract import PricedEvent


class MinuteSpend(msgspec.Struct):
    """The fields of a priced event the detector uses (duck-typed as one)."""

    end_time: datetime
    cost_usd: Decimal
    tenant: str | None = None
    team: str | None = None
    api_key_id: str | None = None
    user: str | None = None
    request_model: str | None = None
    provider: str | None = None


def spends_per_minute(events: Iterable[PricedEvent], bucket_s: int = 60) -> list[MinuteSpend]:
    """One ``MinuteSpend`` per (dimensions, bucket) of ``events``, oldest first."""
    sums: dict[tuple[object, ...], MinuteSpend] = {}
    for event in events:
        if not event.cost_usd:
            continue
        spend = MinuteSpend(
            event.end_time,
            event.cost_usd,
            event.tenant,
            event.team,
            event.api_key_id,
            event.user,
            event.request_model,
            event.provider,
        )
        key = (
            spend.tenant,
            spend.team,
            spend.api_key_id,
            spend.user,
            spend.request_model,
            spend.provider,
            int(spend.end_time.timestamp()) // bucket_s,
        )
        total = sums.get(key)
        if total is None:
            sums[key] = spend
        else:
            total.cost_usd += spend.cost_usd
            total.end_time = max(total.end_time, spend.end_time)
    return sorted(sums.values(), key=lambda s: s.end_time)
