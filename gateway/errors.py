"""Gateway errors, and the one place they become provider-style JSON.

Each error knows its HTTP status and the provider error type; ``error_body`` renders it
in the dialect of the API the client called (OpenAI or Anthropic), so an SDK raises its
usual typed exception.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from tollgate.contract import Status
from tollgate.errors import TollgateError


class Dialect(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class GatewayError(TollgateError):
    """A call the gateway answers itself, with an error."""

    http_status = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    code: str | None = None
    status = Status.UPSTREAM_ERROR
    """How the usage event records a call that ended in this error."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(GatewayError):
    """The request is malformed: bad JSON, a missing or wrongly typed field."""

    http_status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    status = Status.REJECTED_INVALID


class TokenBudgetExceeded(InvalidRequest):
    """The call's input alone is over the per-call token budget it runs under."""

    code = "token_budget_exceeded"
    status = Status.REJECTED_BUDGET


class Unauthenticated(GatewayError):
    """No credentials, or credentials that do not check out."""

    http_status = 401
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"
    status = Status.REJECTED_AUTH


class ModelNotAllowed(GatewayError):
    """The caller's key may not use this model."""

    http_status = 403
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"
    code = "model_not_allowed"
    status = Status.REJECTED_AUTH


class ModelNotFound(GatewayError):
    """No route is configured for the requested model."""

    http_status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "model_not_found"
    status = Status.REJECTED_INVALID


class PayloadTooLarge(GatewayError):
    """The request body is over the configured size."""

    http_status = 413
    openai_type = "invalid_request_error"
    anthropic_type = "request_too_large"
    status = Status.REJECTED_INVALID


class RequestTimeout(GatewayError):
    """The client did not send its whole request body within the gateway's time limit."""

    http_status = 408
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "request_timeout"
    status = Status.REJECTED_INVALID


class RequestHeadTooLarge(GatewayError):
    """The request line or a header is over aiohttp's size limit (answered before routing)."""

    http_status = 431
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "request_header_fields_too_large"
    status = Status.REJECTED_INVALID


class MalformedRequest(GatewayError):
    """The bytes received are not an HTTP request aiohttp can parse."""

    http_status = 400
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    status = Status.REJECTED_INVALID


class UnsupportedMediaType(GatewayError):
    """The request body is not JSON."""

    http_status = 415
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    status = Status.REJECTED_INVALID


class TooManyRequests(GatewayError):
    """Refused at the door for a limit; ``retry_after_s`` says when to come back."""

    http_status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after_s + 0.4999)))}


class RateLimited(TooManyRequests):
    """The key's calls-per-period limit is used up."""

    code = "rate_limit_exceeded"
    status = Status.REJECTED_RATE_LIMIT

    def __init__(self, message: str, *, retry_after_s: float, limit: int | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.limit = limit


class BudgetExceeded(TooManyRequests):
    """A blocking token or dollar budget the call falls under is spent."""

    code = "budget_exceeded"
    status = Status.REJECTED_BUDGET

    def __init__(self, message: str, *, retry_after_s: float, budget_id: str) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.budget_id = budget_id


class UpstreamFailed(GatewayError):
    """Every backend for the model failed or is out of service."""

    http_status = 502
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "upstream_error"
    status = Status.UPSTREAM_ERROR


class ServiceBusy(GatewayError):
    """The gateway is serving as many connections as it may; come back shortly."""

    http_status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    code = "too_many_connections"
    status = Status.UPSTREAM_ERROR


class InternalError(GatewayError):
    """A fault of the gateway's own (a bug): answered in the provider's format all the same."""

    http_status = 500
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "internal_error"
    status = Status.UPSTREAM_ERROR


class NotFound(GatewayError):
    """No such endpoint."""

    http_status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "unknown_url"
    status = Status.REJECTED_INVALID


class MethodNotAllowed(NotFound):
    http_status = 405


class ShuttingDown(GatewayError):
    """The gateway is stopping: the call was not taken; another instance (or this one,
    restarted) will take it after ``Retry-After``."""

    http_status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    code = "shutting_down"
    status = Status.UPSTREAM_ERROR
    retry_after_s = 2

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s), "connection": "close"}


class UpstreamTimeout(GatewayError):
    """The backend did not answer in time."""

    http_status = 504
    openai_type = "timeout"
    anthropic_type = "timeout_error"
    code = "upstream_timeout"
    status = Status.TIMEOUT


def error_body(error: GatewayError, dialect: Dialect) -> dict[str, Any]:
    """The JSON body of ``error`` as the provider whose API was called would write it."""
    if dialect is Dialect.ANTHROPIC:
        return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.code,
        }
    }


def stream_error_event(error: GatewayError, dialect: Dialect) -> bytes:
    """``error`` as a server-sent event, for a failure after the stream has started.

    Both providers end a broken stream this way, and both SDKs raise on it, so the client
    learns that the answer is incomplete instead of seeing a clean end.
    """
    data = json.dumps(error_body(error, dialect), separators=(",", ":"))
    if dialect is Dialect.ANTHROPIC:
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


class RequestNotFound(GatewayError):
    """An evaluation names a request id that is no call of the caller's tenant."""

    http_status = 404
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "request_not_found"
    status = Status.REJECTED_INVALID
