"""Talking to a backend: its URL, its credentials, and which headers cross the gateway.

Client credentials never reach the upstream and upstream credentials never reach the
client: both directions drop every auth header, and the backend's own key is added here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

from multidict import CIMultiDict

from gateway.routes import BackendConfig, BackendKind

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED_UP = HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "x-forwarded-for",
    "openai-organization",
    "openai-project",
}
_NOT_FORWARDED_DOWN = HOP_BY_HOP | {
    "content-length",
    "content-encoding",
    "set-cookie",
    "server",
    "date",
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
}
_PROVIDER_LIMIT_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
"""The gateway's provider-account limits: not the caller's business, and the gateway
writes the caller's own ``x-ratelimit-*`` headers in their place."""
ANTHROPIC_VERSION = "2023-06-01"


def upstream_url(backend: BackendConfig, path: str, model: str) -> str:
    """Where to send a call for ``path`` (an OpenAI or Anthropic ``/v1/...`` path)."""
    base = backend.base_url.rstrip("/")
    if backend.kind is BackendKind.AZURE:
        deployment = quote(backend.deployments.get(model, model), safe="")
        operation = path.removeprefix("/v1/")
        return (
            f"{base}/openai/deployments/{deployment}/{operation}?api-version={backend.api_version}"
        )
    if base.endswith("/v1"):
        return base + path.removeprefix("/v1")
    return base + path


def upstream_headers(
    backend: BackendConfig, client_headers: Mapping[str, str], secret: str | None
) -> CIMultiDict[str]:
    """The client's headers minus credentials and hop-by-hop ones, plus the backend's key."""
    headers: CIMultiDict[str] = CIMultiDict(
        (name, value)
        for name, value in client_headers.items()
        if name.lower() not in _NOT_FORWARDED_UP
    )
    headers["accept-encoding"] = "identity"
    if backend.kind is BackendKind.ANTHROPIC:
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if secret:
            headers["x-api-key"] = secret
    elif backend.kind is BackendKind.AZURE:
        if secret:
            headers["api-key"] = secret
    elif secret:
        headers["authorization"] = f"Bearer {secret}"
    return headers


def client_headers(upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers (name, value) that may be passed on to the client."""
    return CIMultiDict(
        (name, value)
        for name, value in upstream
        if name.lower() not in _NOT_FORWARDED_DOWN
        and not name.lower().startswith(_PROVIDER_LIMIT_PREFIXES)
    )
