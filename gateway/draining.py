"""Stopping without hanging anyone: calls in flight finish, calls that come later are told.

Once the gateway is stopping, a new call gets an immediate 503 with ``Retry-After`` in the
API's own error format (and no usage event: it was never taken), while the calls already
in flight finish, for a bounded time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import Dialect, ShuttingDown, error_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Drain:
    """Counts the calls in flight; refuses new ones once ``stop_taking_calls`` was called."""

    def __init__(self) -> None:
        self.stopping = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def guard(self, handler: Handler, dialect: Dialect) -> Handler:
        """``handler``, counted while it runs, and refused with a 503 once stopping."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.stopping:
                error = ShuttingDown("the gateway is shutting down; retry shortly")
                return web.json_response(
                    error_body(error, dialect), status=error.http_status, headers=error.headers()
                )
            self.in_flight += 1
            self._idle.clear()
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        return guarded

    def stop_taking_calls(self) -> None:
        self.stopping = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Whether every call in flight finished within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
