"""OpenID Connect discovery: an issuer named by its ``/.well-known/openid-configuration``.

As API Management's ``<openid-config url=...>``: the discovery document gives the
issuer a token's ``iss`` must equal and the ``jwks_uri`` its keys are read from. The
document is fetched when first needed and again every ``cache_s``; the keys follow the
rules of a JWKS URL (cached, fetched again when a token names an unknown key id, so a key
rotation is picked up), and a ``jwks_uri`` that moved gets a fresh key set.

Several issuers can stand side by side (Entra ID's v1 and v2 endpoints issue tokens with
different ``iss`` values); ``JwtIssuers`` hands each token to the verifier of the issuer it
names. ``required_claim_values`` checks claims as the policy's ``<required-claims>`` with
``match="any"``: the claim (or, for a list claim such as ``roles``, one of its items)
must equal one of the listed values.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import jwt

from gateway.errors import Unauthenticated
from gateway.principal import Principal

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0
RETRY_AFTER_FAILURE_S = 5.0
MAX_DOCUMENT_BYTES = 1 << 20


class KeySource(Protocol):
    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK: ...


class Discovery:
    """An OpenID Provider's discovery document, and the keys at its ``jwks_uri``."""

    def __init__(
        self,
        url: str,
        cache_s: float,
        clock: Callable[[], float],
        keys_at: Callable[[str], KeySource],
    ) -> None:
        self._url = url
        self._cache_s = cache_s
        self._clock = clock
        self._keys_at = keys_at
        self._issuer: str | None = None
        self._jwks_uri: str | None = None
        self._keys: KeySource | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()

    async def issuer(self) -> str:
        """The issuer the document names; ``Unauthenticated`` if it was never readable."""
        await self._refresh_if_stale()
        if self._issuer is None:
            raise Unauthenticated("cannot verify token: the issuer's discovery document failed")
        return self._issuer

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        await self._refresh_if_stale()
        if self._keys is None:
            raise Unauthenticated("cannot verify token: the issuer's discovery document failed")
        return await self._keys.key_for(kid, algorithm)

    async def _refresh_if_stale(self) -> None:
        if self._clock() - self._fetched_at < self._cache_s:
            return
        async with self._lock:
            now = self._clock()
            if now - self._fetched_at < self._cache_s or (
                now - self._attempted_at < RETRY_AFTER_FAILURE_S
            ):
                return
            self._attempted_at = now
            try:
                document = await _fetch_json(self._url)
                issuer, jwks_uri = document["issuer"], document["jwks_uri"]
                if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
                    raise ValueError("issuer and jwks_uri must be strings")
                if not jwks_uri.startswith(("https://", "http://")):
                    raise ValueError(f"jwks_uri {jwks_uri[:100]!r} is not an http(s) URL")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
                # What was read before stays in use through an outage of the provider.
                log.warning("cannot read OpenID configuration %s: %s", self._url, error)
                return
            if jwks_uri != self._jwks_uri:
                self._keys = self._keys_at(jwks_uri)
                self._jwks_uri = jwks_uri
            self._issuer = issuer
            self._fetched_at = self._clock()


async def _fetch_json(url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers={"accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the discovery document is not a JSON object")
    return document


def check_claim_values(claims: Mapping[str, Any], required: Mapping[str, Sequence[str]]) -> None:
    """Each named claim must hold one of its listed values (any item of a list claim)."""
    for name, accepted in required.items():
        value = claims.get(name)
        held = value if isinstance(value, list) else [value]
        if not any(isinstance(v, str | int) and str(v) in accepted for v in held):
            raise Unauthenticated(f"token claim {name!r} holds none of the accepted values")


class IssuerVerifier(Protocol):
    async def issuer(self) -> str: ...

    async def verify(self, token: str) -> Principal: ...


class JwtIssuers:
    """Several trusted issuers: each token goes to the verifier of the issuer it names."""

    def __init__(self, verifiers: Sequence[IssuerVerifier]) -> None:
        self._verifiers = list(verifiers)

    async def verify(self, token: str) -> Principal:
        if len(self._verifiers) == 1:
            return await self._verifiers[0].verify(token)
        try:
            named = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise Unauthenticated("token is malformed") from None
        for verifier in self._verifiers:
            try:
                issuer = await verifier.issuer()
            except Unauthenticated:
                continue  # a provider that cannot be reached vouches for nobody
            if issuer == named:
                return await verifier.verify(token)
        raise Unauthenticated("token issuer is not accepted")
