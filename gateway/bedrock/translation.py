"""One call to Bedrock: the signed request, and its answer put into the client's dialect.

The proxy sends ``url``/``body``/``headers`` as for any backend, then hands the answer
here: ``answer`` for a whole body, ``sse`` for a stream. ``usage`` holds what Bedrock
reported for the call (its ``usage`` object, the stream's final ``metadata`` event, or
``amazon-bedrock-invocationMetrics``); the proxy meters by it when it is set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from yarl import URL

from gateway.bedrock.event_stream import EventStreamReader, StreamMessage
from gateway.usage_reading import TokenUsage

_ANTHROPIC_ERROR_TYPES = {
    "ThrottlingException": "rate_limit_error",
    "ServiceQuotaExceededException": "rate_limit_error",
    "ServiceUnavailableException": "overloaded_error",
    "ModelNotReadyException": "overloaded_error",
    "ValidationException": "invalid_request_error",
    "AccessDeniedException": "permission_error",
    "ResourceNotFoundException": "not_found_error",
    "ModelTimeoutException": "timeout_error",
}
_OPENAI_ERROR_TYPES = {
    "ThrottlingException": "rate_limit_error",
    "ServiceQuotaExceededException": "rate_limit_error",
    "ValidationException": "invalid_request_error",
    "AccessDeniedException": "invalid_request_error",
    "ResourceNotFoundException": "invalid_request_error",
}


class Translation:
    """A prepared Bedrock call; subclasses know one API (InvokeModel or Converse)."""

    anthropic = False

    def __init__(self, url: URL, body: bytes, headers: list[tuple[str, str]], model_id: str):
        self.url = url
        self.body = body
        self.headers = headers
        self.model_id = model_id
        self.usage: TokenUsage | None = None

    # -- whole answers

    def answer(self, status: int, body: bytes, error_type: str | None = None) -> bytes:
        """The answer as the client's API would have written it."""
        if status >= 300:
            return self.error_body(error_type or "", _message(body))
        return self.success_body(body)

    def success_body(self, body: bytes) -> bytes:
        raise NotImplementedError

    def error_body(self, bedrock_type: str, message: str) -> bytes:
        """A Bedrock error as the client's API writes errors."""
        name = bedrock_type.split(":", 1)[0]
        name = name[:1].upper() + name[1:]
        if self.anthropic:
            kind = _ANTHROPIC_ERROR_TYPES.get(name, "api_error")
            return _json({"type": "error", "error": {"type": kind, "message": message}})
        kind = _OPENAI_ERROR_TYPES.get(name, "server_error")
        return _json({"error": {"message": message, "type": kind, "param": None, "code": name}})

    # -- streams

    async def sse(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The event-stream answer as server-sent events, message by message."""
        reader = EventStreamReader()
        async for chunk in chunks:
            out = []
            for message in reader.feed(chunk):
                if message.is_failure:
                    out.append(self.stream_error(message))
                else:
                    out.append(self.stream_event(message))
            if any(out):
                yield b"".join(out)
        reader.finish()
        tail = self.stream_end()
        if tail:
            yield tail

    def stream_event(self, message: StreamMessage) -> bytes:
        raise NotImplementedError

    def stream_end(self) -> bytes:
        return b""

    def stream_error(self, message: StreamMessage) -> bytes:
        data = self.error_body(message.name, _message(message.payload))
        if self.anthropic:
            return b"event: error\ndata: " + data + b"\n\n"
        return b"data: " + data + b"\n\n"


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or "Bedrock returned an error"
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("Message")
        if isinstance(message, str):
            return message
    return "Bedrock returned an error"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + _json(data) + b"\n\n"
