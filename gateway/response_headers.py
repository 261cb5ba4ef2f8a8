"""The gateway's own headers on every answer: limits left, and tokens this call used.

Names follow OpenAI's ``x-ratelimit-*`` headers, which SDKs and dashboards already
read; they describe the caller's limits at this gateway, replacing the upstream's (which
describe the gateway's provider account and are not the caller's business).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.errors import BudgetExceeded, GatewayError, RateLimited

if TYPE_CHECKING:
    from gateway.budget_book import BudgetHeadroom
    from gateway.call import Call
    from gateway.rate_limit import RateLimitStatus


@dataclass(slots=True)
class LimitHeaders:
    request_id: str
    requests: RateLimitStatus | None = None
    budget: BudgetHeadroom | None = None

    def render(self, call: Call) -> dict[str, str]:
        headers = {"x-tollgate-request-id": self.request_id}
        if self.requests is not None:
            headers["x-ratelimit-limit-requests"] = str(self.requests.limit)
            headers["x-ratelimit-remaining-requests"] = str(self.requests.remaining)
            headers["x-ratelimit-reset-requests"] = _seconds(self.requests.reset_after_s)
        budget = self.budget
        if budget is not None:
            now = datetime.now(UTC)
            reset_s = (budget.reset_at - now).total_seconds() if budget.reset_at else None
            if budget.remaining_tokens is not None:
                headers["x-ratelimit-remaining-tokens"] = str(budget.remaining_tokens)
                if reset_s is not None:
                    headers["x-ratelimit-reset-tokens"] = _seconds(reset_s)
            if budget.remaining_usd is not None:
                headers["x-tollgate-budget-remaining-usd"] = str(budget.remaining_usd)
            if budget.budget_id:
                headers["x-tollgate-budget"] = budget.budget_id
        if call.usage is not None and not call.streamed:
            headers["x-token-used"] = str(call.usage.total_tokens)
        return headers


def refusal_headers(error: GatewayError) -> dict[str, str]:
    """The limit headers of the gateway's own 429s: those of its 200s, at zero.

    A call refused by the rate limit never got a ``RateLimitStatus``, and one refused by a
    budget never got its headroom; these stand in for them.
    """
    if isinstance(error, RateLimited) and error.limit is not None:
        return {
            "x-ratelimit-limit-requests": str(error.limit),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": _seconds(error.retry_after_s),
        }
    if isinstance(error, BudgetExceeded):
        return {
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": _seconds(error.retry_after_s),
            "x-tollgate-budget": error.budget_id,
        }
    return {}


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}s"
