"""Which headers cross the gateway, each way, and the secrets that never do.

Both directions pass headers by allowlist: a header nobody listed here does not cross,
so a proxy header a client adds (``Forwarded``, ``X-Real-IP``, ``Expect``) never reaches a
provider, and a header a provider (or something in front of it) adds — a debugging echo of
the request's ``Authorization``, a cookie, an account id — never reaches a client.

Whatever does cross is also checked against the configured provider secrets: a header
value or a response body holding one has it replaced by ``[redacted]`` (secrets shorter
than ``MIN_REDACTED_SECRET`` characters are not looked for: a short value would match
ordinary text, and no provider issues keys that short).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FORWARDED_UP = frozenset(
    {
        "accept",
        "content-type",
        "user-agent",
        "idempotency-key",
        "openai-beta",
        "anthropic-version",
        "anthropic-beta",
    }
)
"""Request headers a provider may see (besides the backend's own credentials)."""
FORWARDED_UP_PREFIXES = ("x-stainless-",)
"""The official SDKs' own description of themselves (language, version, retry count)."""

PASSED_DOWN = frozenset(
    {
        "content-type",
        "cache-control",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "x-request-id",
        "request-id",
        "openai-processing-ms",
        "openai-version",
        "apim-request-id",
    }
)
"""Response headers a client may see: what the SDKs read (retry advice, request ids)."""

MIN_REDACTED_SECRET = 8
REDACTED = "[redacted]"


def forwarded_up(
    headers: Mapping[str, str], also: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """The client's request headers a provider may see; ``also``: lower-case names the
    operator added (``TOLLGATE_GATEWAY_FORWARD_HEADERS``)."""
    kept = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in FORWARDED_UP or lower in also or lower.startswith(FORWARDED_UP_PREFIXES):
            kept.append((name, value))
    return kept


def passed_down(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The provider's response headers a client may see."""
    return [(name, value) for name, value in headers if name.lower() in PASSED_DOWN]


class SecretRedactor:
    """Replaces the configured provider secrets wherever they would leave the gateway."""

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if len(s) >= MIN_REDACTED_SECRET}
        # Longest first: a secret that contains another is replaced whole.
        self._text = sorted(unique, key=len, reverse=True)
        self._bytes = [s.encode() for s in self._text]

    def __bool__(self) -> bool:
        return bool(self._text)

    def body(self, data: bytes) -> bytes:
        for secret in self._bytes:
            if secret in data:
                data = data.replace(secret, REDACTED.encode())
        return data

    def value(self, text: str) -> str:
        for secret in self._text:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text
