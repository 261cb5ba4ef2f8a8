"""The fake provider as a server: the aiohttp application and a runner on a free port.

``create_app()`` builds the application, for anyone hosting it themselves. ``FakeProvider``
serves it on 127.0.0.1 (port 0 unless told otherwise) and reports the address it got:
``async with`` serves it on the running loop; plain ``with`` serves it on a loop of its own in
a daemon thread, so synchronous SDK clients can block on it from the test's thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from tollgate.fake_provider.anthropic_api import count_tokens, messages
from tollgate.fake_provider.bedrock import add_bedrock_routes
from tollgate.fake_provider.catalog import list_models
from tollgate.fake_provider.config import FakeProviderConfig
from tollgate.fake_provider.control import add_control_routes
from tollgate.fake_provider.endpoint import CLOSING, STATE, endpoint
from tollgate.fake_provider.errors import anthropic_error_response, openai_error_response
from tollgate.fake_provider.openai_api import chat_completions, completions, embeddings
from tollgate.fake_provider.openai_responses import responses
from tollgate.fake_provider.state import ProviderState

T = TypeVar("T")
_SHUTDOWN_TIMEOUT_S = 2.0


def create_app(config: FakeProviderConfig | None = None) -> web.Application:
    """The fake provider's application: OpenAI and Anthropic routes plus ``/_fake/`` control."""
    app = web.Application(client_max_size=64 << 20)  # prompts of real models are large
    app[STATE] = ProviderState(config or FakeProviderConfig())
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(_release_hung_calls)
    openai_routes = {
        "/v1/chat/completions": chat_completions,
        "/v1/completions": completions,
        "/v1/embeddings": embeddings,
        "/v1/responses": responses,
    }
    for path, answer in openai_routes.items():
        app.router.add_post(path, endpoint(answer, openai_error_response))
    app.router.add_post("/v1/messages", endpoint(messages, anthropic_error_response))
    app.router.add_post(
        "/v1/messages/count_tokens", endpoint(count_tokens, anthropic_error_response)
    )
    app.router.add_get("/v1/models", endpoint(list_models, openai_error_response))
    add_bedrock_routes(app)
    add_control_routes(app)
    return app


async def _release_hung_calls(app: web.Application) -> None:
    app[CLOSING].set()


class FakeProvider:
    """A running fake provider on loopback; ``base_url`` is ``http://127.0.0.1:PORT``."""

    def __init__(
        self, config: FakeProviderConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(config)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Root URL; Anthropic clients take it as is, OpenAI clients want ``openai_base_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def state(self) -> ProviderState:
        return self.app[STATE]

    @property
    def config(self) -> FakeProviderConfig:
        return self.state.config

    def configure(self, **changes: Any) -> FakeProviderConfig:
        """Patch the config, as ``POST /_fake/config`` does; safe from any thread."""

        def patch() -> FakeProviderConfig:
            self.state.config = self.state.config.patched(changes)
            return self.state.config

        return self._on_loop(patch)

    def reset(self) -> None:
        """Back to the start-up config, with empty stats."""
        self._on_loop(self.state.reset)

    def stats(self) -> dict[str, Any]:
        """What ``GET /_fake/stats`` answers."""
        return self._on_loop(self.state.stats.as_json)

    async def start(self) -> FakeProvider:
        """Serve on the running loop; the bound port is read back into ``port``."""
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> FakeProvider:
        """Serve on a new event loop in a daemon thread; returns once it is listening."""
        loop = _new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-provider", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
        return self

    def stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> FakeProvider:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_thread()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the serving thread's loop when there is one, else right here."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    def __repr__(self) -> str:
        fields = dataclasses.asdict(self.config)
        return f"FakeProvider({self.base_url}, {fields})"


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
