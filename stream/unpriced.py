"""An alarm for models the price catalog does not know: said once, on first use.

The fallback price keeps such calls counted (and, shipped, over- rather than
under-counted), but whoever owns the catalog should add the model: each (tenant, model)
priced at the fallback raises one ``unpriced_model`` alert per worker run, beside the
``tollgate_stream_fallback_priced_events`` counter. The alert id is derived from the
tenant, model and day, so a worker restarted the same day repeats the same id and a
webhook receiver that dedupes by ``X-Tollgate-Alert-Id`` says it once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, time

from tollgate.contract import Alert, AlertKind, Dimension, PricedEvent, Severity, subject_key
from tollgate.ids import uuid7_for

_REMEMBERED = 10_000
"""A flood of odd model names raises at most this many alerts before the memory resets."""


class UnpricedModels:
    def __init__(self) -> None:
        self._seen: set[tuple[str | None, str]] = set()

    def observe(self, events: Iterable[PricedEvent]) -> list[Alert]:
        """An alert for each (tenant, model) priced at the fallback for the first time."""
        alerts = []
        for event in events:
            model = event.request_model or event.response_model
            if not event.price_fallback or model is None:
                continue
            key = (event.tenant, model)
            if key in self._seen:
                continue
            if len(self._seen) >= _REMEMBERED:
                self._seen.clear()
            self._seen.add(key)
            alerts.append(_alert(event, model))
        return alerts


def _alert(event: PricedEvent, model: str) -> Alert:
    scope = {Dimension.MODEL: model}
    if event.tenant is not None:
        scope[Dimension.TENANT] = event.tenant
    day = event.end_time.astimezone(UTC).date()
    day_ms = int(datetime.combine(day, time(), UTC).timestamp() * 1000)
    return Alert(
        alert_id=uuid7_for(day_ms, f"unpriced|{event.tenant}|{model}|{day}".encode()),
        kind=AlertKind.UNPRICED_MODEL,
        severity=Severity.WARNING,
        time=event.end_time,
        subject=subject_key(scope),
        scope=scope,
        summary=(
            f"model {model} ({event.provider}) is not in the price catalog: priced at the "
            f"fallback ({event.price_version}); add it to the catalog"
        ),
        actual_usd=event.cost_usd,
    )
