"""Who may call: API keys and JWTs, checked at the door of every request.

The routes file's ``auth`` section is read once into ``AuthConfig``; ``Authenticator``
turns a request's headers into a ``Principal`` or raises ``Unauthenticated`` (401). With
no keys and no JWT issuer configured, every request is refused.

```yaml
auth:
  api_keys:
    - id: acme-app                 # appears in usage events; never a secret
      key_sha256: 9f86d0…          # hash_api_key(key): the key itself is never stored
      tenant: acme
      team: search
      user: ada
      allowed_models: [gpt-4o]     # omit: every configured model
      rate_limit: {calls: 60, renewal_period_s: 60}
      tags: {env: prod}
      token_budget: {header: X-Token-Budget, default: 10000, ceiling: 50000}   # per call
  jwt:                             # optional: tokens from an identity provider (or a list
    issuer: https://login.example.com/   #   of issuers, each token going by its iss)
    audience: tollgate             # or a list
    jwks_url: https://login.example.com/.well-known/jwks.json   # or jwks_file, or
    # openid_config_url: https://login.microsoftonline.com/<tid>/v2.0/.well-known/openid-configuration
    #   (issuer and jwks_uri read from it; issuer may then be left out)
    algorithms: [RS256, ES256]     # asymmetric only
    leeway_s: 30
    max_lifetime_s: 86400          # optional: refuse tokens valid for longer than this
    tenant_claim: tenant           # required in every token
    team_claim: team
    user_claim: sub
    models_claim: models           # optional: a list of model names
    required_claims: [email]
    required_claim_values: {roles: [Gateway.User, Gateway.Admin]}   # any one of them
    rate_limit: {calls: 600, renewal_period_s: 60}
    jwks_cache_s: 300
```

A caller sends ``Authorization: Bearer <credential>`` (the OpenAI SDK's way),
``x-api-key: <credential>`` (Anthropic's) or ``api-key: <credential>`` (Azure OpenAI's).
A credential shaped like a JWT goes to the JWT verifier when one is configured; anything
else is looked up as an API key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import Unauthenticated
from gateway.jwt_auth import JwtVerifier, symmetric_or_unknown
from gateway.oidc import JwtIssuers
from gateway.principal import Principal, RateLimit, TokenBudgetPolicy

MISSING_CREDENTIALS = (
    "missing API key: send `Authorization: Bearer <key>`, `x-api-key` or `api-key`"
)
INVALID_API_KEY = "invalid API key"

_JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """The hex SHA-256 of ``key``: what the routes file stores instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Strict):
    calls: Annotated[int, Field(gt=0)]
    renewal_period_s: Annotated[float, Field(gt=0)]

    def to_rate_limit(self) -> RateLimit:
        return RateLimit(calls=self.calls, renewal_period_s=self.renewal_period_s)


class TokenBudgetConfig(_Strict):
    """The per-call ``X-Token-Budget`` rule of one key (see ``gateway.token_budget``)."""

    header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")] = "X-Token-Budget"
    default: Annotated[int, Field(gt=0)] = 10_000
    ceiling: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _default_within_ceiling(self) -> Self:
        if self.ceiling is not None and self.default > self.ceiling:
            raise ValueError(f"default {self.default} is over the ceiling {self.ceiling}")
        return self

    def to_policy(self) -> TokenBudgetPolicy:
        return TokenBudgetPolicy(header=self.header, default=self.default, ceiling=self.ceiling)


class ApiKeyConfig(_Strict):
    """One API key, known by the hash of its secret."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$", max_length=128)]
    """No ``:``, so a key's id can never collide with a JWT caller's ``jwt:<sub>``."""
    key_sha256: str
    tenant: Annotated[str, Field(min_length=1)]
    team: str | None = None
    user: str | None = None
    allowed_models: list[str] | None = None
    rate_limit: RateLimitConfig | None = None
    tags: dict[str, str] = {}
    token_budget: TokenBudgetConfig | None = None

    @field_validator("key_sha256")
    @classmethod
    def _is_a_sha256(cls, value: str) -> str:
        if not _SHA256_HEX.match(value):
            raise ValueError("must be 64 lowercase hex digits: the SHA-256 of the key")
        return value

    def principal(self) -> Principal:
        return Principal(
            tenant=self.tenant,
            api_key_id=self.id,
            team=self.team,
            user=self.user,
            allowed_models=None if self.allowed_models is None else frozenset(self.allowed_models),
            rate_limit=None if self.rate_limit is None else self.rate_limit.to_rate_limit(),
            tags=dict(self.tags),
            token_budget=None if self.token_budget is None else self.token_budget.to_policy(),
        )


class JwtConfig(_Strict):
    """Tokens from one issuer, verified against its published public keys (JWKS)."""

    issuer: Annotated[str, Field(min_length=1)] | None = None
    """Required, unless read from ``openid_config_url``."""
    audience: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1)]
    jwks_file: Path | None = None
    jwks_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    openid_config_url: Annotated[str, Field(pattern=r"^https?://")] | None = None
    """An OpenID Provider's discovery document: issuer and jwks_uri are read from it."""
    algorithms: Annotated[list[str], Field(min_length=1)] = ["RS256", "ES256"]
    leeway_s: Annotated[float, Field(ge=0)] = 30.0
    max_lifetime_s: Annotated[float, Field(gt=0)] | None = None
    """Refuse a token whose ``exp`` is further than this from now, or from its ``iat``:
    a leaked long-lived token stays usable no longer than this. Unset: no limit."""
    tenant_claim: Annotated[str, Field(min_length=1)] = "tenant"
    team_claim: str | None = "team"
    user_claim: str | None = "sub"
    models_claim: str | None = None
    """A claim listing the models the caller may use; absent from a token: every model."""
    required_claims: list[str] = []
    required_claim_values: dict[str, Annotated[list[str], Field(min_length=1)]] = {}
    """Claim → accepted values: the claim (or an item of a list claim) must be one of them."""
    rate_limit: RateLimitConfig | None = None
    """Applies to each JWT subject separately."""
    token_budget: TokenBudgetConfig | None = None
    """The per-call ``X-Token-Budget`` rule of every token from this issuer."""
    jwks_cache_s: Annotated[float, Field(gt=0)] = 300.0

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, algorithms: list[str]) -> list[str]:
        for algorithm in algorithms:
            problem = symmetric_or_unknown(algorithm)
            if problem:
                raise ValueError(problem)
        return algorithms

    @model_validator(mode="after")
    def _one_key_source(self) -> Self:
        sources = (self.jwks_file, self.jwks_url, self.openid_config_url)
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one of jwks_file and jwks_url (or openid_config_url)")
        if self.issuer is None and self.openid_config_url is None:
            raise ValueError("issuer is required unless openid_config_url names it")
        return self


class AuthConfig(_Strict):
    """The routes file's ``auth`` section. Empty: every request is refused."""

    api_keys: list[ApiKeyConfig] = []
    jwt: JwtConfig | list[JwtConfig] | None = None
    """One trusted issuer, or several side by side (tokens go by their ``iss``)."""

    @model_validator(mode="after")
    def _keys_are_unique(self) -> Self:
        for attribute in ("id", "key_sha256"):
            values = [getattr(key, attribute) for key in self.api_keys]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                shown = repeated if attribute == "id" else [v[:12] + "…" for v in repeated]
                raise ValueError(f"api_keys: duplicate {attribute} {shown}")
        return self


class Authenticator:
    """Turns request headers into a ``Principal``; the only door into the gateway.

    An API key costs one dict lookup by its hash. A JWT is verified once, then its
    principal is cached until the token expires (or for a minute at most).
    """

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] | None = None) -> None:
        self._by_hash = {key.key_sha256: key.principal() for key in config.api_keys}
        issuers = [] if config.jwt is None else config.jwt
        issuers = issuers if isinstance(issuers, list) else [issuers]
        self._jwt = (
            JwtIssuers([JwtVerifier(issuer, clock=clock) for issuer in issuers])
            if issuers
            else None
        )

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        credential = _credential(headers)
        if self._jwt is not None and _JWT_SHAPE.match(credential):
            return await self._jwt.verify(credential)
        principal = self._by_hash.get(hash_api_key(credential))
        if principal is None:
            raise Unauthenticated(INVALID_API_KEY)
        return principal


def _credential(headers: Mapping[str, str]) -> str:
    """The caller's secret: the Bearer token, else ``x-api-key``, else ``api-key``."""
    authorization = _header(headers, "authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in ("x-api-key", "api-key"):  # Anthropic's header, Azure OpenAI's header
        api_key = (_header(headers, name) or "").strip()
        if api_key:
            return api_key
    if authorization and authorization.strip().partition(" ")[0].lower() != "bearer":
        raise Unauthenticated("unsupported Authorization scheme: send `Bearer <key>`")
    raise Unauthenticated(MISSING_CREDENTIALS)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``name``'s value, whatever its case: aiohttp's headers ignore case, a dict does not."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value
