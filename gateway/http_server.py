"""The gateway's HTTP server: aiohttp's own, with its edges closed to slow and odd clients.

- **Idle and slow heads.** aiohttp arms its keep-alive timer when a connection opens and
  after every answer, and closes the connection when it fires while no complete request
  head has arrived. With ``idle_timeout_s`` as that timer, a connection that is silent,
  idle between calls, or trickling its headers is closed after that long (aiohttp's own
  default is an hour). aiohttp 3.14.5, the version required, arms the timer when a
  connection opens; older versions armed it only after a first answer, and held a
  connection that never finished its first head.
  The body is bounded apart (``body_timeout_s``, in the proxy).
- **A cap on connections.** Past ``max_connections`` a new connection is answered at once
  with a 503 in OpenAI's error format, before any of its bytes are read, and closed when
  the client has read it (a second at most), so that the process keeps file descriptors
  for the calls it serves (each also holds one upstream connection).
- **Malformed or oversized request heads** are answered in OpenAI's error format (431 for
  a request line or header over 8190 bytes, else 400) with a fixed message, and logged at
  WARNING with the error's class only: aiohttp's own answer and ERROR log quote the first
  bytes of the offending line, which may be a credential.

aiohttp has no public hook for these, so this module subclasses its ``Server`` and
``RequestHandler`` and reads a few of their attributes (constructor arguments, the
connection table); ``tests/test_gateway_hardening.py`` fails if an aiohttp release moves
them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway.errors import (
    Dialect,
    GatewayError,
    MalformedRequest,
    RequestHeadTooLarge,
    ServiceBusy,
    error_body,
)
from tollgate.settings import GatewaySettings

log = logging.getLogger("tollgate.gateway")

_REFUSAL_LINGER_S = 1.0
_FD_RESERVE = 64
"""Descriptors kept for the broker, the spool, upstream pools and logs."""


def default_max_connections() -> int:
    """Half the open-files limit less a reserve: each client connection may hold an
    upstream one too."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, (soft - _FD_RESERVE) // 2)


def _raw_answer(error: GatewayError) -> bytes:
    body = json.dumps(error_body(error, Dialect.OPENAI), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {error.http_status} {_REASONS[error.http_status]}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_REASONS = {503: "Service Unavailable"}
_BUSY = _raw_answer(ServiceBusy("the gateway is serving its maximum number of connections"))


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` for the gateway app, with the limits of ``settings``."""

    def __init__(self, app: web.Application, settings: GatewaySettings, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        super().__init__(app, keepalive_timeout=settings.idle_timeout_s, **kwargs)
        self.max_connections = settings.max_connections or default_max_connections()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _GuardedServer(made, self.max_connections)


class _GuardedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory), counting connections and handing out
    ``_GuardedHandler`` protocols. Built from the one ``web.Application`` made."""

    def __init__(self, made: web.Server, max_connections: int) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
        self.max_connections = max_connections
        self.refused = 0

    def at_capacity(self) -> bool:
        return len(self._connections) >= self.max_connections

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(self, loop=self._loop, **self._kwargs)


class _GuardedHandler(RequestHandler):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if isinstance(server, _GuardedServer) and server.at_capacity():
            self._manager = None  # never registered: connection_lost has nothing to undo
            server.refused += 1
            if server.refused == 1 or server.refused % 1000 == 0:
                log.warning(
                    "refused a connection: %d connections open (the maximum); %d refused so far",
                    server.max_connections,
                    server.refused,
                )
            assert isinstance(transport, asyncio.Transport)
            # Answer, half-close, and drop whatever the client sends until it closes (or a
            # second has passed): closing with its request unread would reset the
            # connection, and the client might never read the answer.
            self._force_close = True  # data_received ignores everything from now on
            transport.write(_BUSY)
            if transport.can_write_eof():
                transport.write_eof()
            self._loop.call_later(_REFUSAL_LINGER_S, transport.close)
            return
        super().connection_made(transport)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        error: GatewayError = (
            RequestHeadTooLarge("the request line or a header is over 8190 bytes")
            if isinstance(exc, LineTooLong)
            else MalformedRequest("the request is not valid HTTP")
        )
        # The exception's text quotes the request's bytes: name its class only.
        log.warning(
            "refused a malformed request (%s)",
            type(exc).__name__,
            extra={"fields": {"reason": type(exc).__name__, "http_status": error.http_status}},
        )
        response = web.json_response(error_body(error, Dialect.OPENAI), status=error.http_status)
        response.force_close()
        return response
