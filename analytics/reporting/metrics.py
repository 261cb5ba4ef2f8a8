"""Prometheus metrics of the reporting API, on a registry of its own (one per app).

Requests are labelled by route template (``/v1/budgets/{budget_id}/burn``), never by the
raw path, so a caller cannot grow the label set.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
UNMATCHED = "unmatched"


class ReportingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tollgate_reporting_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tollgate_reporting_request_duration_seconds",
            "Time from request to the end of the answer",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.query_time = Histogram(
            "tollgate_reporting_query_duration_seconds",
            "Time spent in DuckDB per query",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "tollgate_reporting_rows", "Rows returned by endpoint", ["endpoint"], registry=r
        )

    def observe_query(self, endpoint: str, seconds: float, rows: int) -> None:
        self.query_time.labels(endpoint).observe(seconds)
        self.rows.labels(endpoint).inc(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def endpoint_of(scope: Scope, mounts: tuple[str, ...] = ()) -> str:
    """The route template that served ``scope``, the mount it fell under, or ``unmatched``."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    request_path = scope.get("path", "")
    return next((mount for mount in mounts if request_path.startswith(mount + "/")), UNMATCHED)


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: streaming answers pass through)."""

    def __init__(
        self, app: ASGIApp, metrics: ReportingMetrics, mounts: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.mounts = mounts
        # Mounted apps (the dashboard's static files) name no route of their own.

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = endpoint_of(scope, self.mounts)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
