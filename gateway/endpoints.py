"""Every path an AI call may come in by, and the OpenAI or Anthropic path it stands for.

Clients reach the same operations by several doors: OpenAI's ``/v1/...`` paths, the same
paths without ``/v1`` (some SDKs and tools are configured with the bare host as their base
URL), Azure OpenAI's ``/openai/deployments/{deployment}/...`` paths with ``api-version``,
and Azure's newer ``/openai/v1/...`` paths. Each door maps to one ``Endpoint``: what the
call is, which API's error format it speaks, and the canonical ``/v1`` path it is forwarded
as. The backend kind then decides the real upstream URL (``gateway.upstream``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import Dialect
from tollgate.contract import Operation

DEPLOYMENT = "deployment"
"""The match-info name of the deployment in an Azure deployment path."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a path serves: the operation, the API dialect, the canonical upstream path."""

    operation: Operation
    dialect: Dialect
    upstream_path: str
    by_deployment: bool = False
    """The model is named by the path's ``{deployment}`` (Azure), not by the body."""


_CANONICAL = {
    "/v1/chat/completions": Operation.CHAT,
    "/v1/completions": Operation.COMPLETIONS,
    "/v1/embeddings": Operation.EMBEDDINGS,
    "/v1/responses": Operation.RESPONSES,
}
_AZURE_DEPLOYMENT_OPERATIONS = ("chat/completions", "completions", "embeddings")


def _build() -> dict[str, Endpoint]:
    paths: dict[str, Endpoint] = {}
    for path, operation in _CANONICAL.items():
        endpoint = Endpoint(operation, Dialect.OPENAI, path)
        tail = path.removeprefix("/v1")
        paths[path] = endpoint
        paths[tail] = endpoint  # un-prefixed: base URL given as the bare host
        paths["/openai/v1" + tail] = endpoint  # Azure OpenAI's v1 API
    paths["/openai/responses"] = Endpoint(Operation.RESPONSES, Dialect.OPENAI, "/v1/responses")
    for tail in _AZURE_DEPLOYMENT_OPERATIONS:
        paths[f"/openai/deployments/{{{DEPLOYMENT}}}/{tail}"] = Endpoint(
            _CANONICAL[f"/v1/{tail}"], Dialect.OPENAI, f"/v1/{tail}", by_deployment=True
        )
    paths["/v1/messages"] = Endpoint(Operation.MESSAGES, Dialect.ANTHROPIC, "/v1/messages")
    return paths


AI_ENDPOINTS: dict[str, Endpoint] = _build()
"""Route pattern (aiohttp syntax) → what it serves; every POST the gateway meters."""

MODEL_LIST_PATHS = ("/v1/models", "/models", "/openai/v1/models", "/openai/models")
MODEL_PATHS = tuple(f"{path}/{{model_id:.+}}" for path in MODEL_LIST_PATHS)
"""Model ids may hold slashes (``meta-llama/Llama-3.1-8B``)."""


def guess_operation(path: str) -> Operation:
    """The operation an unknown path most likely meant, for the event that records it.

    The contract's operation is required; a 404's event names the closest one by the
    path's last words (chat when nothing fits), so failing calls show up next to the
    working ones in the same reports.
    """
    if "embeddings" in path:
        return Operation.EMBEDDINGS
    if "messages" in path:
        return Operation.MESSAGES
    if "responses" in path:
        return Operation.RESPONSES
    if path.rstrip("/").endswith("completions") and "chat" not in path:
        return Operation.COMPLETIONS
    return Operation.CHAT


def guess_dialect(path: str, has_anthropic_version: bool) -> Dialect:
    """Anthropic's error format for its paths or its SDK's requests; OpenAI's otherwise."""
    if path.startswith("/v1/messages") or has_anthropic_version:
        return Dialect.ANTHROPIC
    return Dialect.OPENAI
