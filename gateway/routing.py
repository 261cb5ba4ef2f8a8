"""Choosing a backend: priorities, weights, and circuit breakers.

Backends are tried in priority order; within one priority, in a weighted random order so
traffic splits by weight. A backend whose circuit is open is skipped until its cool-down
ends; then one trial call is let through (half-open) and its outcome closes or re-opens it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from itertools import groupby

from gateway.routes import BackendConfig


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures, for ``cooldown_s``."""

    failure_threshold: int = 3
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    def allows(self, now: float) -> bool:
        """Whether a call may be tried now (closed, or half-open with no trial running)."""
        if self.opened_at is None:
            return True
        return now - self.opened_at >= self.cooldown_s and not self.trial_in_flight

    def begin_attempt(self, now: float) -> bool:
        """Claim the attempt; in half-open state only one caller wins the trial."""
        if not self.allows(now):
            return False
        if self.opened_at is not None:
            self.trial_in_flight = True
        return True

    def abort_attempt(self) -> None:
        """The attempt ended without a verdict (cancelled): let another trial run."""
        self.trial_in_flight = False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def record_failure(self, now: float) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = now

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


@dataclass
class Router:
    """Orders a model's backends for one call and keeps each backend's breaker."""

    failure_threshold: int = 3
    cooldown_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def breaker(self, backend: str) -> CircuitBreaker:
        breaker = self.breakers.get(backend)
        if breaker is None:
            breaker = self.breakers[backend] = CircuitBreaker(
                self.failure_threshold, self.cooldown_s
            )
        return breaker

    def candidates(self, backends: list[BackendConfig]) -> list[BackendConfig]:
        """The backends to try, in order, leaving out those whose circuit is open."""
        now = time.monotonic()
        if len(backends) == 1:
            return backends if self.breaker(backends[0].name).allows(now) else []
        ordered: list[BackendConfig] = []
        by_priority = sorted(backends, key=lambda b: b.priority)
        for _, group in groupby(by_priority, key=lambda b: b.priority):
            ordered += self._weighted_order(list(group))
        return [b for b in ordered if self.breaker(b.name).allows(now)]

    def _weighted_order(self, group: list[BackendConfig]) -> list[BackendConfig]:
        if len(group) == 1:
            return group
        # Efraimidis-Spirakis: sort by u^(1/w) for a weighted permutation in one pass.
        return sorted(group, key=lambda b: self.rng.random() ** (1 / b.weight), reverse=True)

    def begin_attempt(self, backend: str) -> bool:
        return self.breaker(backend).begin_attempt(time.monotonic())

    def abort_attempt(self, backend: str) -> None:
        self.breaker(backend).abort_attempt()

    def record_success(self, backend: str) -> None:
        self.breaker(backend).record_success()

    def record_failure(self, backend: str) -> None:
        self.breaker(backend).record_failure(time.monotonic())
