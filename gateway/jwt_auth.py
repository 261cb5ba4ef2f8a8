"""JWT verification against an issuer's published public keys (a JWKS).

Only asymmetric algorithms are accepted: a JWKS holds public keys, so an HMAC "key" in
it would let anyone who can read the set mint tokens, and ``none`` means no signature.
A token's algorithm must be on the allowlist *and* fit its key (``RS*``/``PS*`` an RSA
key, ``ES256`` a P-256 key, …), which closes the algorithm-confusion attacks.

Keys come from a file, read once at start-up, or from a URL, fetched when first needed,
refreshed every ``jwks_cache_s`` and, when a token names a key id the set lacks, fetched
again at most once per 30 s so an issuer's key rotation is picked up without letting
junk tokens hammer it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt

from gateway.errors import Unauthenticated
from gateway.oidc import Discovery, check_claim_values
from gateway.principal import Principal
from tollgate.errors import SettingsError

if TYPE_CHECKING:
    from gateway.auth import JwtConfig

log = logging.getLogger(__name__)

_KEY_TYPE = {
    **dict.fromkeys(["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"], "RSA"),
    **dict.fromkeys(["ES256", "ES384", "ES512", "ES256K"], "EC"),
    "EdDSA": "OKP",
}
_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1"}

REFETCH_INTERVAL_S = 30.0
"""Least time between two fetches of a JWKS URL prompted by an unknown key id."""
RETRY_AFTER_FAILURE_S = 5.0
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1 << 20
CACHE_SIZE = 4096
CACHE_TTL_S = 60.0


def symmetric_or_unknown(algorithm: str) -> str | None:
    """Why ``algorithm`` may not be allowed, or None if it may."""
    if algorithm.lower() == "none":
        return "algorithm 'none' is not allowed: tokens must be signed"
    if algorithm.upper().startswith("HS"):
        return (
            f"algorithm {algorithm!r} is not allowed: a symmetric (HMAC) algorithm cannot be "
            "verified with the public keys of a JWKS"
        )
    if algorithm not in _KEY_TYPE:
        return f"unknown algorithm {algorithm!r}: choose from {sorted(_KEY_TYPE)}"
    return None


class UnknownKey(Unauthenticated):
    """The token names a key id the key set does not hold."""


class KeySet:
    """The usable public keys of a JWKS, by key id."""

    def __init__(self, jwks: Any) -> None:
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError('a JWKS must be a JSON object with a "keys" list')
        self._keys: list[dict[str, Any]] = []
        for key in jwks["keys"]:
            if not isinstance(key, dict) or key.get("use", "sig") != "sig":
                continue
            if key.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # symmetric ("oct") keys have no place in a public key set
            try:
                jwt.PyJWK(key)
            except jwt.PyJWTError:
                continue  # as PyJWKSet does: one odd key does not spoil the set
            self._keys.append(key)
        if not self._keys:
            raise ValueError("the JWKS holds no usable public signing key")
        self._by_kid = {key["kid"]: key for key in self._keys if "kid" in key}
        self._built: dict[tuple[int, str], jwt.PyJWK] = {}

    def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """The key verifying a token with header ``kid`` and ``alg``."""
        if kid is None:
            if len(self._keys) != 1:
                raise Unauthenticated("token has no key id (kid) and the key set has several keys")
            key = self._keys[0]
        else:
            found = self._by_kid.get(kid)
            if found is None:
                raise UnknownKey(f"token signing key {kid[:64]!r} is not known")
            key = found
        if not _fits(key, algorithm):
            raise Unauthenticated(f"token algorithm {algorithm} does not match its signing key")
        # A PyJWK is bound to one algorithm; build one per (key, algorithm) actually used.
        built = self._built.get((id(key), algorithm))
        if built is None:
            built = self._built[(id(key), algorithm)] = jwt.PyJWK(key, algorithm)
        return built


def _fits(key: dict[str, Any], algorithm: str) -> bool:
    if key.get("alg") is not None and key["alg"] != algorithm:
        return False
    if key.get("kty") != _KEY_TYPE.get(algorithm):
        return False
    return algorithm not in _CURVE or key.get("crv") == _CURVE[algorithm]


class FileKeys:
    """A JWKS read from a file at start-up; a bad file stops the gateway starting."""

    def __init__(self, path: Path) -> None:
        try:
            self._keys = KeySet(json.loads(path.read_text()))
        except OSError as error:
            raise SettingsError(f"cannot read JWKS file {path}: {error.strerror}") from None
        except ValueError as error:  # JSONDecodeError is one
            raise SettingsError(f"invalid JWKS file {path}: {error}") from None

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        return self._keys.key_for(kid, algorithm)


class RemoteKeys:
    """A JWKS fetched from the issuer's URL, cached, refetched on rotation."""

    def __init__(self, url: str, cache_s: float, clock: Callable[[], float]) -> None:
        self._url = url
        self._cache_s = cache_s
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        if self._clock() - self._fetched_at >= self._cache_s:
            await self._refresh(min_gap_s=RETRY_AFTER_FAILURE_S)
        if self._keys is None:
            raise Unauthenticated("cannot verify token: the issuer's keys could not be fetched")
        try:
            return self._keys.key_for(kid, algorithm)
        except UnknownKey:
            if not await self._refresh(min_gap_s=REFETCH_INTERVAL_S):
                raise
            return self._keys.key_for(kid, algorithm)

    async def _refresh(self, min_gap_s: float) -> bool:
        """Fetch the set unless a fetch was tried in the last ``min_gap_s``; True if fetched.

        On failure the keys already held stay in use: an issuer's brief outage should not
        lock out callers whose tokens were verifiable a minute ago.
        """
        async with self._lock:
            if self._clock() - self._attempted_at < min_gap_s:
                return False
            self._attempted_at = self._clock()
            try:
                self._keys = KeySet(await self._fetch())
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                log.warning("cannot fetch JWKS from %s: %s", self._url, error)
                return False
            self._fetched_at = self._clock()
            return True

    async def _fetch(self) -> Any:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self._url, headers={"accept": "application/json"}) as response,
        ):
            response.raise_for_status()
            body = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


class JwtVerifier:
    """Verifies tokens from one issuer and maps their claims to a ``Principal``."""

    def __init__(self, config: JwtConfig, *, clock: Callable[[], float] | None = None) -> None:
        self._config = config
        self._clock = clock or time.time
        self._keys: FileKeys | RemoteKeys | Discovery
        self._discovery: Discovery | None = None
        if config.jwks_file is not None:
            self._keys = FileKeys(config.jwks_file)
        elif config.openid_config_url is not None:
            clock_s, cache_s = self._clock, config.jwks_cache_s
            self._keys = self._discovery = Discovery(
                config.openid_config_url,
                cache_s,
                clock_s,
                lambda jwks_uri: RemoteKeys(jwks_uri, cache_s, clock_s),
            )
        else:
            assert config.jwks_url is not None
            self._keys = RemoteKeys(config.jwks_url, config.jwks_cache_s, self._clock)
        self._required = list(
            dict.fromkeys(
                [
                    "exp",
                    "iss",
                    "aud",
                    config.tenant_claim,
                    *config.required_claims,
                    *config.required_claim_values,
                ]
            )
        )
        self._rate_limit = None if config.rate_limit is None else config.rate_limit.to_rate_limit()
        self._token_budget = (
            None if config.token_budget is None else config.token_budget.to_policy()
        )
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """The principal ``token`` stands for; ``Unauthenticated`` saying why not."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        now = self._clock()
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(digest)
            return cached[0]
        claims = await self._claims(token)
        check_claim_values(claims, self._config.required_claim_values)
        principal = self._principal(claims)
        self._cache[digest] = (principal, min(float(claims["exp"]), now + CACHE_TTL_S))
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return principal

    async def issuer(self) -> str:
        """The ``iss`` this verifier accepts: configured, or read by discovery."""
        if self._config.issuer is not None or self._discovery is None:
            return self._config.issuer or ""
        return await self._discovery.issuer()

    async def _claims(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("token is malformed") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if not isinstance(algorithm, str) or algorithm not in self._config.algorithms:
            raise Unauthenticated(f"token algorithm {str(algorithm)[:16]} is not allowed")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("token is malformed")
        key = await self._keys.key_for(kid, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._config.audience,
                issuer=await self.issuer(),
                leeway=self._config.leeway_s,
                options={"require": self._required},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_reason(error)) from None
        self._check_lifetime(claims)
        return claims

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """``max_lifetime_s``: ``exp`` no further than that from now, nor from ``iat``."""
        longest = self._config.max_lifetime_s
        if longest is None:
            return
        limit = longest + self._config.leeway_s
        expires = float(claims["exp"])  # PyJWT checked it is a number
        issued = claims.get("iat")
        start = float(issued) if isinstance(issued, int | float) else None
        if expires - self._clock() > limit or (start is not None and expires - start > limit):
            raise Unauthenticated(
                f"token lifetime is over the maximum of {longest:g} s this gateway accepts"
            )

    def _principal(self, claims: dict[str, Any]) -> Principal:
        config = self._config
        tenant = _text_claim(claims, config.tenant_claim)
        assert tenant is not None  # a required claim
        models = None
        if config.models_claim is not None and config.models_claim in claims:
            listed = claims[config.models_claim]
            if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
                raise Unauthenticated(f"token claim {config.models_claim!r} must list model names")
            models = frozenset(listed)
        return Principal(
            tenant=tenant,
            api_key_id=f"jwt:{_text_claim(claims, 'sub') or 'anonymous'}",
            team=None if config.team_claim is None else _text_claim(claims, config.team_claim),
            user=None if config.user_claim is None else _text_claim(claims, config.user_claim),
            allowed_models=models,
            rate_limit=self._rate_limit,
            token_budget=self._token_budget,
        )


def _text_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unauthenticated(f"token claim {name!r} must be a string")
    return str(value)


def _reason(error: jwt.PyJWTError) -> str:
    """A precise, token-free account of why PyJWT refused a token."""
    match error:
        case jwt.ExpiredSignatureError():
            return "token has expired"
        case jwt.ImmatureSignatureError():
            return "token is not yet valid"
        case jwt.InvalidAudienceError():
            return "token audience is not accepted"
        case jwt.InvalidIssuerError():
            return "token issuer is not accepted"
        case jwt.MissingRequiredClaimError():
            return f"token is missing required claim {error.claim!r}"
        case jwt.InvalidSignatureError():
            return "token signature is invalid"
        case jwt.InvalidAlgorithmError():
            return "token algorithm is not allowed"
        case jwt.DecodeError():
            return "token is malformed"
    return f"token is invalid: {error}"
