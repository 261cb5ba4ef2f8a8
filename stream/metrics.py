"""Prometheus metrics of a stream worker: what went in, what came out, what was dropped."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from stream.budget_batches import BudgetOutput
from stream.meter import MeterOutput
from tollgate.contract import Alert


class StreamMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("tollgate_stream_usage_events", "Usage records read", registry=r)
        self.priced = Counter("tollgate_stream_priced_events", "Events priced", registry=r)
        self.fallback_priced = Counter(
            "tollgate_stream_fallback_priced_events",
            "Events of models not in the catalog, priced at the fallback",
            registry=r,
        )
        self.deduped = Counter(
            "tollgate_stream_duplicate_events", "Redelivered events dropped", registry=r
        )
        self.dead = Counter("tollgate_stream_dead_letters", "Records sent to the DLQ", registry=r)
        self.contributions = Counter(
            "tollgate_stream_budget_contributions", "Contributions counted", registry=r
        )
        self.replayed = Counter(
            "tollgate_stream_budget_replays",
            "Contributions dropped as already counted (after a restart)",
            registry=r,
        )
        self.late = Counter(
            "tollgate_stream_budget_late", "Contributions for windows already closed", registry=r
        )
        self.reread = Counter(
            "tollgate_stream_reread_gaps",
            "Times records came past a missing offset and the partition was read again from it",
            registry=r,
        )
        self.alerts_raised = Counter(
            "tollgate_stream_alerts", "Alerts raised", ["kind"], registry=r
        )
        self.usage_age = Gauge(
            "tollgate_stream_usage_lag_seconds",
            "Age of the newest usage event metered: how far the meter is behind the calls",
            registry=r,
        )

    def meter_batch(self, records: int, out: MeterOutput) -> None:
        self.events_in.inc(records)
        self.priced.inc(len(out.priced))
        self.fallback_priced.inc(sum(1 for e in out.priced_events if e.price_fallback))
        self.deduped.inc(out.duplicates)
        self.dead.inc(len(out.dead))
        if out.priced_events:
            newest = max(event.end_time for event in out.priced_events)
            self.usage_age.set(max(time.time() - newest.timestamp(), 0.0))

    def budget_batch(self, out: BudgetOutput) -> None:
        self.contributions.inc(out.applied)
        self.replayed.inc(out.duplicates)
        self.late.inc(out.late)

    def alerts(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            self.alerts_raised.labels(alert.kind.value).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``port`` (0: not at all)."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
