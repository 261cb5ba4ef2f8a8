"""Who is calling: the identity a request was authenticated as."""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate.contract import Dimension


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``calls`` calls per ``renewal_period_s`` (the article's rate-limit policy)."""

    calls: int
    renewal_period_s: float


@dataclass(frozen=True, slots=True)
class TokenBudgetPolicy:
    """A key's per-call token budget rule (see ``gateway.token_budget``)."""

    header: str = "X-Token-Budget"
    default: int = 10_000
    ceiling: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the budget dimensions its calls are metered under."""

    tenant: str
    api_key_id: str
    """A key's id, or for a JWT caller ``jwt:<sub>``; never a secret."""
    team: str | None = None
    user: str | None = None
    allowed_models: frozenset[str] | None = None
    """None: every configured model."""
    rate_limit: RateLimit | None = None
    tags: dict[str, str] = field(default_factory=dict)
    token_budget: TokenBudgetPolicy | None = None
    """None: calls are not budgeted one by one."""

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models

    def dimensions(self, model: str | None, provider: str | None) -> dict[Dimension, str | None]:
        """The values budgets are scoped by, for a call to ``model``."""
        return {
            Dimension.TENANT: self.tenant,
            Dimension.TEAM: self.team,
            Dimension.API_KEY: self.api_key_id,
            Dimension.USER: self.user,
            Dimension.MODEL: model,
            Dimension.PROVIDER: provider,
        }
