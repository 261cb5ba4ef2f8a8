"""The path every API request takes before its answer is written.

``endpoint()`` wraps an API's answer function: it records the request in the stats, decides
the call's behaviour (config, failure schedule, ``x-fake-*`` headers), waits out the latency,
hangs or fails as told, and renders any ``FakeProviderError`` in the API's own error format.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from tollgate.fake_provider.behaviour import CallBehaviour, has_overrides
from tollgate.fake_provider.errors import FakeProviderError, InjectedFailure, InvalidRequest
from tollgate.fake_provider.state import ProviderState
from tollgate.fake_provider.tokens import count_prompt_tokens

STATE = web.AppKey("fake_provider_state", ProviderState)
CLOSING = web.AppKey("fake_provider_closing", asyncio.Event)

# Hanging calls wake on shutdown; this only bounds a server nobody shuts down.
_HANG_LIMIT_S = 3600.0


@dataclass(slots=True)
class Call:
    """One admitted request: its parsed body and the behaviour it must show."""

    request: web.Request
    body: dict[str, Any]
    behaviour: CallBehaviour
    state: ProviderState
    _prompt_tokens: int | None = None

    @property
    def model(self) -> str:
        model = self.body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter")
        return model

    @property
    def streaming(self) -> bool:
        return self.body.get("stream") is True

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = count_prompt_tokens(self.body)
        return self._prompt_tokens

    def visible_tokens(self, *limit_fields: str) -> int:
        """Tokens of text to produce: ``output_tokens``, cut to the request's own limit (the
        first of ``limit_fields`` it sets), as a real model stops at ``max_tokens``."""
        wanted = self.behaviour.output_tokens
        for field in limit_fields:
            limit = self.body.get(field)
            if isinstance(limit, int) and not isinstance(limit, bool):
                return max(0, min(wanted, limit))
        return wanted

    @property
    def cached_tokens(self) -> int:
        """Cached prompt tokens: as configured, but never more than the prompt has."""
        return min(self.behaviour.cached_input_tokens, self.prompt_tokens)


def json_answer(payload: Any, headers: dict[str, str], status: int = 200) -> web.Response:
    """A JSON response encoded with msgspec."""
    return web.Response(
        status=status,
        body=msgspec.json.encode(payload),
        content_type="application/json",
        headers=headers,
    )


Answer = Callable[[Call], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[FakeProviderError, str], web.Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint(answer: Answer, render_error: ErrorRenderer) -> Handler:
    """A request handler that admits the call, then lets ``answer`` write the response."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        try:
            call = await _admit(request, state)
            return await answer(call)
        except FakeProviderError as error:
            return render_error(error, state.next_id("req_"))
        except (asyncio.CancelledError, ConnectionResetError):
            # The caller closed the connection before the answer was out.
            state.stats.aborted += 1
            raise

    return handle


async def _admit(request: web.Request, state: ProviderState) -> Call:
    raw = await request.read() if request.body_exists else b"{}"
    body = _decode(raw)
    state.stats.record(request.path, request.headers, body)
    behaviour = state.next_behaviour()
    if has_overrides(request.headers):
        behaviour = behaviour.overridden_by(request.headers)
    if behaviour.hang:
        await _hang(request)
    if behaviour.latency_ms > 0:
        await asyncio.sleep(behaviour.latency_ms / 1000)
    if behaviour.fail_status is not None:
        raise InjectedFailure(
            f"fake provider failure injected with status {behaviour.fail_status}",
            status=behaviour.fail_status,
        )
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return Call(request, body, behaviour, state)


def _decode(raw: bytes) -> Any:
    """The JSON body, or the raw text when it is not JSON (refused after being recorded)."""
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw.decode(errors="replace")


async def _hang(request: web.Request) -> None:
    """Answer nothing until the server shuts down (or the client gives up and is cancelled)."""
    closing = request.app[CLOSING]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing.wait(), _HANG_LIMIT_S)
    raise InjectedFailure("fake provider hung until shutdown", status=503)
