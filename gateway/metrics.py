"""Prometheus metrics of the gateway, on a registry of its own (one per app)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.model_names import UNROUTED_LABEL
from tollgate.contract import Status, UsageEvent

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._observers: list[Callable[[UsageEvent], None]] = []
        r = self.registry
        self.requests = Counter(
            "tollgate_gateway_requests", "AI calls by outcome", ["operation", "status"], registry=r
        )
        self.latency = Histogram(
            "tollgate_gateway_request_duration_seconds",
            "Time from request to the end of the answer",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tollgate_gateway_upstream_duration_seconds",
            "Time spent on a backend",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_failures = Counter(
            "tollgate_gateway_upstream_failures",
            "Backend attempts that failed (connect error, 429, 5xx)",
            ["backend"],
            registry=r,
        )
        self.tokens = Counter(
            "tollgate_gateway_tokens", "Tokens metered", ["direction", "model"], registry=r
        )
        self.budget_rejections = Counter(
            "tollgate_gateway_budget_rejections", "Calls refused for a spent budget", registry=r
        )
        self.metering_faults = Counter(
            "tollgate_gateway_metering_faults",
            "Calls served whose metering failed (should stay zero)",
            registry=r,
        )

    def also_observe(self, observe: Callable[[UsageEvent], None]) -> None:
        """Have ``observe`` see every call's event too (figures kept in another module)."""
        self._observers.append(observe)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup is on every call's path."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def watch(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose a value another component keeps (the emitter's counters, say)."""
        Gauge(name, doc, registry=self.registry).set_function(read)

    def observe_upstream(self, backend: str, elapsed_s: float) -> None:
        self._child(self.upstream_latency, backend).observe(elapsed_s)

    def observe_call(self, event: UsageEvent, route_model: str | None = None) -> None:
        """Count a finished call. Tokens are labelled by ``route_model``, the routes-file
        key that served it, never by the caller's text: the label set stays bounded."""
        operation = event.operation.value
        self._child(self.requests, operation, event.status.value).inc()
        self._child(self.latency, operation).observe(event.duration_ms / 1000)
        if event.status is Status.REJECTED_BUDGET:
            self.budget_rejections.inc()
        if event.total_tokens:
            model = route_model or UNROUTED_LABEL
            self._child(self.tokens, "input", model).inc(event.input_tokens)
            self._child(self.tokens, "output", model).inc(event.output_tokens)
        for observe in self._observers:
            observe(event)

    def render(self) -> bytes:
        return generate_latest(self.registry)
