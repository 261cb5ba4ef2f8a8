"""One AI call through the gateway: govern it at the door, forward it, meter it.

Order at the door: authenticate (401), check the body (415, 413, 400), find the route
(404) and the caller's right to the model (403), then the rate limit and the budgets
(429). The call then goes to the first healthy backend; connect errors, 429 and 5xx
move on to the next one, as long as nothing has been sent to the client yet.

Whatever happens, exactly one usage event is emitted, from a ``finally``; metering is
guarded so that a fault in it never fails the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from yarl import URL

from gateway.auth import Authenticator
from gateway.bedrock import BedrockBackends, Translation
from gateway.budget_book import BudgetBook
from gateway.call import Call
from gateway.emitter import UsageEmitter
from gateway.endpoints import DEPLOYMENT, Endpoint
from gateway.errors import (
    Dialect,
    GatewayError,
    InternalError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
    error_body,
    stream_error_event,
)
from gateway.header_policy import SecretRedactor
from gateway.metrics import GatewayMetrics
from gateway.model_names import MAX_MODEL_NAME, route_key, unknown_model_name
from gateway.rate_limit import RateLimiter
from gateway.request_ids import RequestIds
from gateway.response_headers import LimitHeaders, refusal_headers
from gateway.routes import BackendConfig, BackendKind, RoutesConfig, model_of_deployment
from gateway.routing import Router
from gateway.spend import SpendEstimator
from gateway.sse import SSEFramer, parse_event, without_null_usage
from gateway.token_budget import apply_budget, budget_for
from gateway.upstream import client_headers, upstream_headers, upstream_url
from gateway.upstream_client import (
    UpstreamBrokeOff,
    UpstreamClient,
    UpstreamError,
    UpstreamResponse,
)
from gateway.usage_reading import (
    StreamUsage,
    estimate_tokens,
    estimated_usage,
    response_chars,
    usage_from_body,
)
from tollgate.contract import Operation, Status, UsageEvent
from tollgate.settings import GatewaySettings

log = logging.getLogger("tollgate.gateway")

_RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
_GATEWAY_CREDENTIALS_REFUSED = frozenset({401, 403})
_STREAM_USAGE_OPTION = frozenset({Operation.CHAT, Operation.COMPLETIONS})
_OUTPUT_CAP_FIELD = {
    Operation.CHAT: "max_completion_tokens",
    Operation.COMPLETIONS: "max_tokens",
    Operation.RESPONSES: "max_output_tokens",
    Operation.MESSAGES: "max_tokens",
}
"""Where an operation's output cap goes when the gateway sets the default one."""


@dataclass
class Proxy:
    settings: GatewaySettings
    routes: RoutesConfig
    secrets: dict[str, str]
    router: Router
    authenticator: Authenticator
    limiter: RateLimiter
    budgets: BudgetBook
    emitter: UsageEmitter
    metrics: GatewayMetrics
    upstream: UpstreamClient
    spend: SpendEstimator | None = None
    bedrock: BedrockBackends = field(default_factory=lambda: BedrockBackends({}))
    request_ids: RequestIds | None = None
    """Binds each call's request id to its tenant, for ``POST /v1/evaluations``."""
    _exact_routes: dict[str, list[BackendConfig]] = field(init=False)
    _urls: dict[tuple[str, str, str], URL] = field(init=False, default_factory=dict)
    _redactor: SecretRedactor = field(init=False)
    _also_forward: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._redactor = SecretRedactor(self.secrets.values())
        self._also_forward = frozenset(name.lower() for name in self.settings.forward_headers)
        # Models named exactly resolve with one dict lookup; patterns are matched per call.
        self._exact_routes = {
            model: backends
            for model in self.routes.models
            if (backends := self.routes.backends_for(model)) is not None
        }

    async def handle(
        self,
        request: web.Request,
        operation: Operation,
        dialect: Dialect,
        endpoint: Endpoint | None = None,
    ) -> web.StreamResponse:
        """Answer one call; its usage event is on disk before the answer completes."""
        call = Call(operation, dialect)
        try:
            response = await self._answer(request, call, endpoint)
        except BaseException:  # the client went away: no answer to hold back
            self._settle(call)
            raise
        await self._settle(call).wait()
        return response

    async def _answer(
        self, request: web.Request, call: Call, endpoint: Endpoint | None
    ) -> web.StreamResponse:
        dialect = call.dialect
        payload: dict[str, Any] = {}
        limits = LimitHeaders(request_id=str(call.event_id))
        try:
            call.principal = await self.authenticator.authenticate(request.headers)
            if self.request_ids is not None:
                call.event_id = self.request_ids.issue(call.principal.tenant)
                limits.request_id = str(call.event_id)
            payload, raw = await self._read_json(request)
            if endpoint is not None:
                call.upstream_path = endpoint.upstream_path
                if endpoint.by_deployment:
                    payload, raw = self._model_of_deployment(request, payload, raw)
            model = payload.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("`model` is required and must be a string", param="model")
            if len(model) > MAX_MODEL_NAME:
                raise InvalidRequest(
                    f"`model` is longer than {MAX_MODEL_NAME} characters", param="model"
                )
            call.route_model = route_key(self.routes.models, model)
            # A name no route knows is the caller's text and nothing else: not stored.
            call.request_model = model if call.route_model else unknown_model_name(model)
            backends = self._backends_for(model, dialect)
            if not call.principal.may_use(model):
                raise ModelNotAllowed(f"this key may not use model {model!r}", param="model")
            if call.principal.token_budget is not None:
                payload, raw = self._within_token_budget(request, call, payload, raw, backends)
            if call.principal.rate_limit is not None:
                limits.requests = self.limiter.acquire(
                    call.principal.api_key_id, call.principal.rate_limit, time.monotonic()
                )
            dimensions = call.principal.dimensions(model, backends[0].provider_name)
            # The body's size over-counts its text and the output cap bounds the answer, so
            # the reservation errs on the safe side; real usage replaces it at the end. A
            # call without a cap is reserved the default one.
            output_cap = uncapped = _output_cap(payload)
            if not output_cap and call.operation in _OUTPUT_CAP_FIELD:
                output_cap = self.settings.default_max_output_tokens
            input_estimate = estimate_tokens(len(raw))
            now = datetime.now(UTC)
            usd_estimate = (
                self.spend.reserve_usd(
                    backends[0].provider_name, model, input_estimate, output_cap, now
                )
                if self.spend is not None
                else Decimal(0)
            )
            call.reservation, limits.budget = await self.budgets.admit_waiting(
                dimensions, input_estimate + output_cap, usd_estimate, self.settings.budget_wait_s
            )
            if call.reservation.holds_budgets and not uncapped and output_cap:
                # Under a budget, the upstream call gets that cap too: it cannot use more
                # than it reserved.
                payload = {**payload, _OUTPUT_CAP_FIELD[call.operation]: output_cap}
                raw = _json_encode(payload)
            return await self._forward(request, call, payload, raw, backends, limits)
        except GatewayError as error:
            return self._refuse(call, error, limits)
        except asyncio.CancelledError:
            # The client went away (the server cancels the handler): the upstream call is
            # closed with it; what it used is estimated when the provider never said.
            call.status = Status.CLIENT_CLOSED
            if call.usage is None and call.backend is not None:
                call.usage = estimated_usage(payload, 0)
            raise
        except Exception:
            # A bug of ours: still the provider's error format, and still one event.
            log.exception("internal error on call %s", call.event_id)
            error = InternalError("the gateway failed to handle this request")
            if call.principal is None:
                error.status = Status.REJECTED_AUTH
            return self._refuse(call, error, limits)

    async def refuse_unrouted(
        self, request: web.Request, error: GatewayError, operation: Operation, dialect: Dialect
    ) -> web.Response:
        """Answer a path the gateway does not serve; a caller with valid credentials gets
        the call's one usage event too, so failing clients show in the reports."""
        call = Call(operation, dialect)
        limits = LimitHeaders(request_id=str(call.event_id))
        try:
            call.principal = await self.authenticator.authenticate(request.headers)
        except GatewayError:
            return web.json_response(error_body(error, dialect), status=error.http_status)
        try:
            return self._refuse(call, error, limits)
        finally:
            self._settle(call)

    def _within_token_budget(
        self,
        request: web.Request,
        call: Call,
        payload: dict[str, Any],
        raw: bytes,
        backends: list[BackendConfig],
    ) -> tuple[dict[str, Any], bytes]:
        """The request with its output capped to the call's token budget (or refused)."""
        policy = call.principal.token_budget if call.principal else None
        assert policy is not None
        call.token_budget = budget_for(policy, request.headers)
        budgeted = apply_budget(
            call.token_budget, policy, payload, call.operation, backends[0].kind
        )
        if not budgeted.changed:
            return payload, raw
        return budgeted.payload, _json_encode(budgeted.payload)

    def _model_of_deployment(
        self, request: web.Request, payload: dict[str, Any], raw: bytes
    ) -> tuple[dict[str, Any], bytes]:
        """An Azure deployment path's model, written into the body for the backend."""
        model = model_of_deployment(self.routes, request.match_info[DEPLOYMENT])
        if payload.get("model") == model:
            return payload, raw
        payload = {**payload, "model": model}
        return payload, _json_encode(payload)

    def _refuse(self, call: Call, error: GatewayError, limits: LimitHeaders) -> web.Response:
        call.status, call.http_status = error.status, error.http_status
        response = web.json_response(
            error_body(error, call.dialect),
            status=error.http_status,
            headers={**error.headers(), **refusal_headers(error), **limits.render(call)},
        )
        if isinstance(error, RequestTimeout):
            response.force_close()  # the rest of the body is not worth waiting for
        return response

    def _settle(self, call: Call) -> asyncio.Event:
        """Close the books on a call, once: release its reservation, emit its one event.

        Returns what is set once the event is on disk. Each step is guarded on its own: a
        fault in one never fails the call, and never keeps a reservation held or an event
        unsent.
        """
        if call.written is not None:
            return call.written
        call.written = _NOTHING_TO_WAIT_FOR
        reservation = call.reservation
        try:
            event = call.to_event()
        except Exception:
            self.metrics.metering_faults.inc()
            log.exception("usage event for call %s could not be built", call.event_id)
            if reservation is not None:
                reservation.cancel()
            return call.written
        try:
            if reservation is not None:
                if event.total_tokens or call.status is Status.OK:
                    usd = (
                        self.spend.cost_usd(event)
                        if self.spend is not None and reservation.counts_usd
                        else Decimal(0)
                    )
                    reservation.finish(event.total_tokens, usd, event.end_time)
                else:
                    reservation.cancel()
        except Exception:
            self.metrics.metering_faults.inc()
            log.exception("budget accounting failed for call %s", call.event_id)
        call.written = self.emitter.emit(event)  # never raises
        try:
            self.metrics.observe_call(event, call.route_model)
            _log_call(event)
        except Exception:
            self.metrics.metering_faults.inc()
            log.exception("metrics failed for call %s", call.event_id)
        return call.written

    def _bedrock_call(
        self, backend: BackendConfig, call: Call, payload: dict[str, Any]
    ) -> Translation | None:
        """For a Bedrock backend, the signed request in Bedrock's API (None for others)."""
        if backend.kind is not BackendKind.BEDROCK:
            return None
        return self.bedrock.prepare(
            backend, call.operation, call.dialect, call.request_model or "", payload, call.streamed
        )

    def _upstream_url(self, backend: BackendConfig, path: str, model: str) -> URL:
        """The backend URL as a parsed ``URL``, remembered (parsing it is not free)."""
        key = (backend.name, path, model)
        url = self._urls.get(key)
        if url is None:
            url = URL(upstream_url(backend, path, model))
            if len(self._urls) < 10_000:  # model names come from callers: stay bounded
                self._urls[key] = url
        return url

    def _backend_failed(self, backend: str, reason: str) -> None:
        self.router.record_failure(backend)
        self.metrics.upstream_failures.labels(backend).inc()
        breaker = self.router.breaker(backend)
        log.warning(
            "backend %s failed (%s); %s",
            backend,
            reason,
            "circuit open" if breaker.is_open else f"{breaker.failures} failure(s) in a row",
            extra={"fields": {"backend": backend, "reason": reason}},
        )

    async def read_json(self, request: web.Request) -> tuple[dict[str, Any], bytes]:
        """A request's JSON object body, checked as an AI call's is (415, 413, 400)."""
        return await self._read_json(request)

    def backends_for(self, model: str, dialect: Dialect) -> list[BackendConfig]:
        """The backends an AI call to ``model`` in ``dialect`` goes to, or ModelNotFound."""
        return self._backends_for(model, dialect)

    async def _read_json(self, request: web.Request) -> tuple[dict[str, Any], bytes]:
        if request.content_type != "application/json":
            raise UnsupportedMediaType(
                f"expected Content-Type application/json, got {request.content_type!r}"
            )
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        try:
            if request.content.is_eof():  # arrived with the head, as most do: no timer
                raw = await request.read()
            else:
                async with asyncio.timeout(self.settings.body_timeout_s):
                    raw = await request.read()  # the app's client_max_size bounds it
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit") from None
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s"
            ) from None
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        try:
            payload = _json_decode(raw)
        except msgspec.DecodeError as error:
            raise InvalidRequest(f"request body is not valid JSON: {error}") from None
        except RecursionError:
            raise InvalidRequest("request body is nested too deeply") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("request body must be a JSON object")
        return payload, raw

    def _backends_for(self, model: str, dialect: Dialect) -> list[BackendConfig]:
        backends = self._exact_routes.get(model) or self.routes.backends_for(model)
        family = "anthropic" if dialect is Dialect.ANTHROPIC else "openai"
        if not backends or not backends[0].kind.serves(family, model):
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        return backends

    async def _forward(
        self,
        request: web.Request,
        call: Call,
        payload: dict[str, Any],
        raw: bytes,
        backends: list[BackendConfig],
        limits: LimitHeaders,
    ) -> web.StreamResponse:
        call.streamed = bool(payload.get("stream"))
        options = payload.get("stream_options") or {}
        if not isinstance(options, dict):
            raise InvalidRequest("`stream_options` must be an object", param="stream_options")
        asked_for_usage = bool(options.get("include_usage"))
        with_usage = (payload, raw)
        if call.streamed and call.operation in _STREAM_USAGE_OPTION and not asked_for_usage:
            # Ask the upstream for the usage chunk; the client does not get to see it.
            payload = {**payload, "stream_options": {**options, "include_usage": True}}
            with_usage = (payload, _json_encode(payload))

        failure: GatewayError | None = None
        refused: tuple[int, bytes, Any] | None = None
        for backend in self.router.candidates(backends):
            translation = self._bedrock_call(backend, call, payload)
            if not self.router.begin_attempt(backend.name):
                continue
            call.backend, call.provider = backend.name, backend.provider_name
            injected_usage = with_usage[1] is not raw and backend.stream_usage
            body = with_usage[1] if injected_usage else raw
            started = time.monotonic()
            try:
                upstream = await self.upstream.post(
                    self._upstream_url(
                        backend, call.upstream_path or request.path, call.request_model or ""
                    )
                    if translation is None
                    else translation.url,
                    body if translation is None else translation.body,
                    upstream_headers(
                        backend,
                        request.headers,
                        self.secrets.get(backend.name),
                        self._also_forward,
                    ).items()
                    if translation is None
                    else translation.headers,
                    connect_timeout_s=backend.connect_timeout_s,
                    timeout_s=backend.timeout_s,
                    streamed=call.streamed,
                )
            except (TimeoutError, UpstreamError) as error:
                self._backend_failed(backend.name, type(error).__name__)
                failure = _upstream_error(error, backend.name)
                continue
            except BaseException:
                self.router.abort_attempt(backend.name)  # cancelled: no verdict on it
                raise
            if upstream.status in _GATEWAY_CREDENTIALS_REFUSED:
                # The backend refused the gateway's own key: not the caller's business, and
                # its body may show part of that key.
                self._backend_failed(backend.name, f"HTTP {upstream.status}")
                failure = UpstreamFailed(
                    f"backend {backend.name} refused the gateway's credentials"
                )
                upstream.release()
                continue
            if upstream.status in _RETRYABLE:
                self._backend_failed(backend.name, f"HTTP {upstream.status}")
                body = await _read_quietly(upstream)
                if translation is not None:
                    body = translation.answer(upstream.status, body, _error_type(upstream))
                refused = (upstream.status, body, upstream.header_pairs)
                upstream.release()
                continue
            self.router.record_success(backend.name)
            try:
                if call.streamed and upstream.status == 200:
                    return await self._relay_stream(
                        request, call, upstream, payload, injected_usage, limits, translation
                    )
                return await self._relay_body(call, upstream, payload, limits, translation)
            finally:
                elapsed_s = time.monotonic() - started
                self.metrics.observe_upstream(backend.name, elapsed_s)
                upstream.release()

        if refused is not None:
            # Every backend refused: pass the last provider error on as it was written.
            status, body, headers = refused
            call.status, call.http_status = Status.UPSTREAM_ERROR, status
            response_headers = client_headers(headers, self._redactor)
            response_headers.update(limits.render(call))
            return web.Response(
                status=status, body=self._redactor.body(body), headers=response_headers
            )
        raise failure or UpstreamFailed(
            f"no backend for {call.request_model!r} is available (all are out of service)"
        )

    async def _relay_body(
        self,
        call: Call,
        upstream: UpstreamResponse,
        payload: dict[str, Any],
        limits: LimitHeaders,
        translation: Translation | None = None,
    ) -> web.Response:
        try:
            body = await upstream.read()
            if translation is not None:
                body = translation.answer(upstream.status, body, _error_type(upstream))
        except TimeoutError:
            raise UpstreamTimeout(f"backend {call.backend} did not answer in time") from None
        except UpstreamError as error:
            raise UpstreamFailed(f"backend {call.backend} failed mid-answer: {error}") from None
        call.http_status = upstream.status
        if upstream.status < 300:
            usage, call.response_model = usage_from_body(body, call.dialect is Dialect.ANTHROPIC)
            call.usage = usage or estimated_usage(payload, response_chars(body))
            if translation is not None:
                call.response_model = translation.model_id
                call.usage = translation.usage or call.usage
        else:
            call.status = Status.UPSTREAM_ERROR
        headers = client_headers(upstream.header_pairs, self._redactor)
        headers.update(limits.render(call))
        return web.Response(status=upstream.status, body=self._redactor.body(body), headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        call: Call,
        upstream: UpstreamResponse,
        payload: dict[str, Any],
        injected_usage: bool,
        limits: LimitHeaders,
        translation: Translation | None = None,
    ) -> web.StreamResponse:
        headers = client_headers(upstream.header_pairs, self._redactor)
        headers.update(limits.render(call))
        chunks = upstream.chunks()
        if translation is not None:
            headers["content-type"] = "text/event-stream"
            chunks = translation.sse(chunks)
        response = _StreamResponse(status=upstream.status, headers=headers)
        reader = StreamUsage(call.operation)
        framer = SSEFramer()
        call.http_status = upstream.status
        last: list[bytes] = []
        """The stream's last event and what follows it: held until the usage is on disk."""
        try:
            await response.prepare(request)
            async for chunk in chunks:
                out = []
                for event in framer.feed(chunk):
                    name, data = parse_event(event)
                    usage_only = reader.observe(data)
                    if reader.first_token_seen:
                        call.mark_first_token()
                    if last or data == b"[DONE]" or name in _LAST_EVENTS:
                        last.append(event)
                    elif not injected_usage:
                        out.append(event)
                    elif not usage_only:
                        out.append(without_null_usage(event))
                if out:
                    await response.write(self._redactor.body(b"".join(out)))
            last.append(framer.rest())
            _finish_stream(call, reader, payload, translation)
            await self._settle(call).wait()
            if held := b"".join(last):
                await response.write(self._redactor.body(held))
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            call.status = Status.CLIENT_CLOSED  # the client hung up: nothing to answer
        except asyncio.CancelledError:
            call.status = Status.CLIENT_CLOSED
            raise
        except (TimeoutError, UpstreamError) as error:
            # Bytes have reached the client, so no failover: end the stream with an error
            # event the client's SDK raises on.
            failure = _upstream_error(error, call.backend or "")
            call.status = failure.status
            await _end_stream_quietly(response, stream_error_event(failure, call.dialect))
        finally:
            if call.written is None:
                _finish_stream(call, reader, payload, translation)
        return response


_LAST_EVENTS = frozenset({"message_stop", "response.completed", "response.incomplete"})
"""Events that end a stream (with OpenAI's ``data: [DONE]``): a client that has one has
its whole answer, so it waits until the call's usage is on disk."""


def _finish_stream(
    call: Call, reader: StreamUsage, payload: dict[str, Any], translation: Translation | None
) -> None:
    """What the stream said about the call, once it is over."""
    call.response_model = reader.response_model
    if reader.error_seen and call.status is Status.OK:
        call.status = Status.UPSTREAM_ERROR
    call.usage = reader.settle(payload)
    if translation is not None:
        call.response_model = translation.model_id
        call.usage = translation.usage or call.usage


class _StreamResponse(web.StreamResponse):
    """Holds the status line and headers back until the first event, to send them in
    one write: the upstream has answered already, and a syscall per call is saved."""

    _send_headers_immediately = False


def _log_call(event: UsageEvent) -> None:
    """One line per call at DEBUG: who, which model, how it ended, what it used; no content.

    The usage event is the durable record of every call; this line is for following a
    gateway live (TOLLGATE_LOG_LEVEL=debug), and costs nothing when it is off.
    """
    if not log.isEnabledFor(logging.DEBUG):
        return
    fields = {
        "request_id": str(event.event_id),
        "tenant": event.tenant,
        "api_key_id": event.api_key_id,
        "operation": event.operation.value,
        "model": event.request_model,
        "backend": event.backend,
        "status": event.status.value,
        "http_status": event.http_status,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "duration_ms": round(event.duration_ms, 2),
    }
    log.debug(
        "call %s %s %s -> %s %s (%d+%d tokens, %.1f ms)",
        fields["request_id"],
        event.api_key_id,
        event.request_model,
        event.status.value,
        event.http_status,
        event.input_tokens,
        event.output_tokens,
        event.duration_ms,
        extra={"fields": fields},
    )


def _output_cap(payload: dict[str, Any]) -> int:
    """The most output tokens the request allows, when it says (0 when it does not)."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _error_type(upstream: UpstreamResponse) -> str | None:
    """AWS's error type header (``ThrottlingException:http://...``), when present."""
    return next((v for k, v in upstream.header_pairs if k.lower() == "x-amzn-errortype"), None)


def _upstream_error(error: BaseException, backend: str) -> GatewayError:
    if isinstance(error, TimeoutError):
        return UpstreamTimeout(f"backend {backend} did not answer in time")
    if isinstance(error, UpstreamBrokeOff):
        return UpstreamFailed(f"backend {backend} broke off its answer")
    return UpstreamFailed(f"backend {backend} is unreachable")


async def _end_stream_quietly(response: web.StreamResponse, last: bytes) -> None:
    """Write a last event and end the stream, unless the client has gone already."""
    with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
        await response.write(last)
        await response.write_eof()


async def _read_quietly(upstream: UpstreamResponse) -> bytes:
    try:
        return await upstream.read()
    except (TimeoutError, UpstreamError):
        return b""


_json_decode = msgspec.json.Decoder().decode
_NOTHING_TO_WAIT_FOR = asyncio.Event()
_NOTHING_TO_WAIT_FOR.set()
_json_encode = msgspec.json.Encoder().encode
