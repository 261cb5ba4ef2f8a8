"""Real servers for tests, each on its own event loop in a thread.

Sync SDK clients in a test block the test's thread; a server on its own thread keeps
answering them, as a real deployment would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Awaitable[T], timeout_s: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class AppServer:
    """An aiohttp application served on 127.0.0.1, on a free port, in a thread."""

    def __init__(
        self,
        make_app: Callable[[], web.Application],
        make_runner: Callable[[web.Application], web.AppRunner] | None = None,
    ) -> None:
        self.thread = LoopThread()
        self._make_app = make_app
        self._make_runner = make_runner or (
            lambda app: web.AppRunner(app, access_log=None, shutdown_timeout=5)
        )
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> AppServer:
        async def start() -> None:
            self.runner = self._make_runner(self._make_app())
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]

        self.thread.run(start())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (for touching its state safely)."""

        async def invoke() -> Any:
            return fn()

        return self.thread.run(invoke())

    def stop(self) -> None:
        if self.runner is not None:
            self.thread.run(self.runner.cleanup())
        self.thread.stop()
