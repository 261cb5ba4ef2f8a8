"""Talking to a backend: its URL, its credentials, and which headers cross the gateway.

Client credentials never reach the upstream and upstream credentials never reach the
client: both directions pass headers by allowlist (``gateway.header_policy``), and the
backend's own key is added here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote

from multidict import CIMultiDict

from gateway.header_policy import SecretRedactor, forwarded_up, passed_down
from gateway.routes import BackendConfig, BackendKind

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
    backend: BackendConfig,
    client_headers: Mapping[str, str],
    secret: str | None,
    also_forward: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """The client's allowlisted headers, plus the backend's key."""
    headers: CIMultiDict[str] = CIMultiDict(forwarded_up(client_headers, also_forward))
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


def client_headers(
    upstream: Iterable[tuple[str, str]], redactor: SecretRedactor | None = None
) -> CIMultiDict[str]:
    """The upstream's allowlisted response headers (name, value), secrets redacted.

    The provider's ``x-ratelimit-*`` headers describe the gateway's provider account, not
    the caller's limits, and are not on the list: the gateway writes its own.
    """
    kept = passed_down(upstream)
    if redactor:
        kept = [(name, redactor.value(value)) for name, value in kept]
    return CIMultiDict(kept)
