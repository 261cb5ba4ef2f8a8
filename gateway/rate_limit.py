"""Calls per period per API key: the article's ``rate-limit calls="100" renewal-period="60"``.

A key's window opens at its first call and renews ``renewal_period_s`` later (API
Management's renewal period, not a sliding log): within one window at most ``calls``
calls are admitted, and the next call after the window has run out opens a new one.

Limits are per gateway instance. Behind a load balancer spreading a key over N
instances, the key gets up to N times ``calls`` per period; pin keys to instances (or divide
the configured limit) where that matters. Token and dollar limits, which must hold
across instances, are budgets (``gateway.budget_book``), enforced from the stream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from gateway.errors import RateLimited
from gateway.principal import RateLimit


@dataclass(frozen=True, slots=True)
class RateLimitStatus:
    """Where a key stands after an admitted call: the ``x-ratelimit-*-requests`` numbers."""

    limit: int
    """Calls per window."""
    remaining: int
    """Calls still admitted in this window, after this one."""
    reset_after_s: float
    """Seconds until the window renews."""


@dataclass(slots=True)
class _Window:
    opened_at: float
    renews_at: float
    calls: int = 0


class RateLimiter:
    """Fixed windows per key, opened by a key's first call. Single-threaded (asyncio).

    ``now`` is a monotonic clock in seconds (the event loop's ``time()``); passing it in
    keeps the limiter pure and testable. Memory holds only the windows still open: a
    heap of renewal times lets each call evict the windows that ran out, O(log n).
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._renewals: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Windows held in memory (open ones, and run-out ones not yet evicted)."""
        return len(self._windows)

    def acquire(self, key_id: str, limit: RateLimit, now: float) -> RateLimitStatus:
        """Admit one call of ``key_id`` or raise ``RateLimited`` (which does not count)."""
        self._evict(now)
        window = self._windows.get(key_id)
        if window is None or now >= window.renews_at:
            window = _Window(opened_at=now, renews_at=now + limit.renewal_period_s)
            self._windows[key_id] = window
            heapq.heappush(self._renewals, (window.renews_at, key_id))
        reset_after_s = window.renews_at - now
        if window.calls >= limit.calls:
            raise RateLimited(
                f"rate limit of {limit.calls} calls per {limit.renewal_period_s:g} s "
                f"exceeded for key {key_id}",
                retry_after_s=reset_after_s,
                limit=limit.calls,
            )
        window.calls += 1
        return RateLimitStatus(
            limit=limit.calls, remaining=limit.calls - window.calls, reset_after_s=reset_after_s
        )

    def _evict(self, now: float) -> None:
        renewals = self._renewals
        while renewals and renewals[0][0] <= now:
            renews_at, key_id = heapq.heappop(renewals)
            window = self._windows.get(key_id)
            # A key's newer window has its own heap entry; evict only the one that ran out.
            if window is not None and window.renews_at == renews_at:
                del self._windows[key_id]
