"""Errors the fake provider answers with, and their rendering in each API's error format.

Every deliberate error is a ``FakeProviderError`` carrying an HTTP status; the two renderers
here are the one place it becomes OpenAI or Anthropic error JSON, so clients and gateways see
exactly the bodies the real APIs send.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from tollgate.errors import TollgateError


class FakeProviderError(TollgateError):
    """A request the fake provider refuses, answered with ``status`` in the API's error format."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidRequest(FakeProviderError):
    """The request is malformed: not JSON, no model, or an unparsable ``x-fake-*`` header."""

    status = 400


class InjectedFailure(FakeProviderError):
    """A failure that the config or an ``x-fake-fail-status`` header asked for."""


class ConfigError(FakeProviderError, ValueError):
    """A config value is out of range or of the wrong type."""

    status = 400


_OPENAI_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# Real providers ask clients to back off on these; gateways may honour the header.
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


def openai_error_response(error: FakeProviderError, request_id: str) -> web.Response:
    """``{"error": {"message", "type", "param", "code"}}``, as OpenAI sends it."""
    kind, code = _OPENAI_KINDS.get(error.status, ("server_error", None))
    body = {"error": {"message": error.message, "type": kind, "param": None, "code": code}}
    return _json_error(error.status, body, {"x-request-id": request_id})


def anthropic_error_response(error: FakeProviderError, request_id: str) -> web.Response:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``, as Anthropic sends it."""
    kind = _ANTHROPIC_KINDS.get(error.status, "api_error")
    body = {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": request_id,
    }
    return _json_error(error.status, body, {"request-id": request_id})


def _json_error(status: int, body: object, headers: dict[str, str]) -> web.Response:
    if status in _RETRY_AFTER_STATUSES:
        headers["retry-after"] = "1"
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type="application/json",
        headers=headers,
    )
