"""Time to first token and output speed, per route model and backend, for Prometheus.

Labels are bounded by configuration, never by what callers send: ``model`` is the key of
the routes file that served the call (the exact name, or the pattern such as ``llama-*``
that matched it) and ``backend`` the configured backend's name. Only answered calls
count.

Output tokens per second is ``output_tokens`` over the time after the first token
(``duration_ms - ttft_ms``; the whole duration when there is no first token, as for a call
that was not streamed): the speed the answer was written at. The reporting API's
``/v1/latency`` computes the same two figures from the lake.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from gateway.routes import RoutesConfig
from tollgate.contract import Status, UsageEvent

_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
_SPEED_BUCKETS = (1, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 5000)
_REMEMBERED = 10_000


class LatencyMetrics:
    """Two histograms on the gateway's registry, fed with each call's usage event."""

    def __init__(self, registry: CollectorRegistry, routes: RoutesConfig) -> None:
        self._routes = routes
        self._route_of: dict[str, str | None] = {}
        self._children: dict[tuple[int, str, str], Any] = {}
        self.ttft = Histogram(
            "tollgate_gateway_time_to_first_token_seconds",
            "Time from request to the first token of a streamed answer",
            ["model", "backend"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.output_speed = Histogram(
            "tollgate_gateway_output_tokens_per_second",
            "Output tokens per second after the first token (answered calls with output)",
            ["model", "backend"],
            buckets=_SPEED_BUCKETS,
            registry=registry,
        )

    def observe(self, event: UsageEvent) -> None:
        if event.status is not Status.OK or event.backend is None or event.request_model is None:
            return
        model = self.route_model(event.request_model)
        if model is None:
            return
        if event.ttft_ms is not None:
            self._child(self.ttft, model, event.backend).observe(event.ttft_ms / 1000)
        writing_ms = event.duration_ms - (event.ttft_ms or 0.0)
        if event.output_tokens and writing_ms > 0:
            speed = event.output_tokens * 1000 / writing_ms
            self._child(self.output_speed, model, event.backend).observe(speed)

    def route_model(self, requested: str) -> str | None:
        """The routes file's key for ``requested``: itself, or the pattern it matched."""
        if requested in self._routes.models:
            return requested
        if requested in self._route_of:
            return self._route_of[requested]
        found = next((k for k in self._routes.models if fnmatch.fnmatchcase(requested, k)), None)
        if len(self._route_of) < _REMEMBERED:
            self._route_of[requested] = found
        return found

    def _child(self, metric: Histogram, model: str, backend: str) -> Any:
        key = (id(metric), model, backend)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(model, backend)
        return child
