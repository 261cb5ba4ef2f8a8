"""The gateway as an aiohttp application: its endpoints and its lifecycle.

Start-up opens the upstream connection pool, the usage emitter (which spools to disk
when the broker is away) and the budget-state feed; shutdown closes them in reverse,
flushing every usage event to the broker or the spool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from gateway.auth import Authenticator
from gateway.budget_book import BudgetBook
from gateway.budget_feed import BudgetFeed
from gateway.emitter import UsageEmitter
from gateway.errors import Dialect, GatewayError, MethodNotAllowed, NotFound, error_body
from gateway.evaluations import PATH as EVALUATIONS_PATH
from gateway.evaluations import EvaluationDesk
from gateway.latency_metrics import LatencyMetrics
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.rate_limit import RateLimiter
from gateway.request_ids import RequestIds, load_key
from gateway.routes import RoutesConfig
from gateway.routing import Router
from gateway.spend import SpendEstimator
from gateway.spool import Spool
from gateway.upstream_client import UpstreamClient
from tollgate.contract import Operation
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

PROXY = web.AppKey("proxy", Proxy)
FEED = web.AppKey("feed", BudgetFeed)
EVALUATIONS = web.AppKey("evaluations", EvaluationDesk)

_ENDPOINTS = {
    "/v1/chat/completions": (Operation.CHAT, Dialect.OPENAI),
    "/v1/completions": (Operation.COMPLETIONS, Dialect.OPENAI),
    "/v1/embeddings": (Operation.EMBEDDINGS, Dialect.OPENAI),
    "/v1/responses": (Operation.RESPONSES, Dialect.OPENAI),
    "/v1/messages": (Operation.MESSAGES, Dialect.ANTHROPIC),
}


@dataclass(frozen=True)
class GatewayParts:
    """Everything the gateway is built from, resolved at start-up."""

    settings: Settings
    routes: RoutesConfig
    secrets: Mapping[str, str]
    bootstrap_servers: str


def create_app(parts: GatewayParts) -> web.Application:
    settings = parts.settings
    topics = settings.kafka.topics()
    app = web.Application(client_max_size=settings.gateway.max_body_bytes + 1)
    metrics = GatewayMetrics()
    metrics.also_observe(LatencyMetrics(metrics.registry, parts.routes).observe)
    emitter = UsageEmitter(
        settings.kafka,
        parts.bootstrap_servers,
        topics.usage,
        Spool(settings.gateway.spool_dir, max_bytes=settings.gateway.spool_max_bytes),
    )
    request_ids = RequestIds(
        load_key(
            _secret(settings.gateway.request_id_key),
            settings.gateway.effective_request_id_key_file,
        )
    )
    book = BudgetBook(fail_open=settings.gateway.budget_fail_open)
    feed = BudgetFeed(settings.kafka, parts.bootstrap_servers, topics.budget_state, book)
    proxy = Proxy(
        settings=settings.gateway,
        routes=parts.routes,
        secrets=dict(parts.secrets),
        router=Router(settings.gateway.circuit_failures, settings.gateway.circuit_cooldown_s),
        authenticator=Authenticator(parts.routes.auth),
        limiter=RateLimiter(),
        budgets=book,
        emitter=emitter,
        metrics=metrics,
        upstream=UpstreamClient(),
        spend=SpendEstimator(load_catalog(settings.stream.price_catalog)),
        request_ids=request_ids,
    )
    evaluations = EvaluationDesk(
        proxy.authenticator,
        request_ids,
        UsageEmitter(
            settings.kafka,
            parts.bootstrap_servers,
            topics.evaluations,
            Spool(
                settings.gateway.spool_dir.with_name(
                    settings.gateway.spool_dir.name + "-evaluations"
                ),
                max_bytes=settings.gateway.spool_max_bytes,
            ),
        ),
        max_body_bytes=settings.gateway.max_body_bytes,
    )
    app[PROXY] = proxy
    app[EVALUATIONS] = evaluations
    app[FEED] = feed
    _watch_components(metrics, emitter, feed)

    for path, (operation, dialect) in _ENDPOINTS.items():
        app.router.add_post(path, _call_handler(proxy, operation, dialect))
    app.router.add_post(EVALUATIONS_PATH, evaluations.handle)
    app.router.add_get("/v1/models", _models_handler(proxy))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics_handler(metrics))
    app.router.add_route("*", "/{tail:.*}", _no_such_endpoint)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
    proxy, feed, evaluations = app[PROXY], app[FEED], app[EVALUATIONS]
    await proxy.emitter.start()
    await evaluations.emitter.start()
    await feed.start()
    yield
    await feed.stop()
    await evaluations.emitter.stop()
    await proxy.emitter.stop()
    await proxy.upstream.close()


def _call_handler(proxy: Proxy, operation: Operation, dialect: Dialect):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request, operation, dialect)

    return handle


def _models_handler(proxy: Proxy):  # type: ignore[no-untyped-def]
    async def models(request: web.Request) -> web.Response:
        try:
            principal = await proxy.authenticator.authenticate(request.headers)
        except GatewayError as error:
            return web.json_response(error_body(error, Dialect.OPENAI), status=error.http_status)
        names = [
            name
            for name in proxy.routes.models
            if not any(c in name for c in "*?[") and principal.may_use(name)
        ]
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "tollgate"}
                    for name in names
                ],
            }
        )

    return models


async def _no_such_endpoint(request: web.Request) -> web.Response:
    """Unknown paths and wrong methods, answered as OpenAI or Anthropic would."""
    dialect = Dialect.ANTHROPIC if request.path.startswith("/v1/messages") else Dialect.OPENAI
    known = request.path in _ENDPOINTS or request.path in ("/v1/models", EVALUATIONS_PATH)
    error: GatewayError = (
        MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
        if known
        else NotFound(f"unknown endpoint {request.method} {request.path}")
    )
    return web.json_response(error_body(error, dialect), status=error.http_status)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    proxy, feed = request.app[PROXY], request.app[FEED]
    checks = {
        "config": True,
        "broker": proxy.emitter.broker_connected,
        "budget_state": feed.caught_up,
    }
    ready = all(checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status=200 if ready else 503,
    )


def _metrics_handler(metrics: GatewayMetrics):  # type: ignore[no-untyped-def]
    async def render(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    return render


def _watch_components(metrics: GatewayMetrics, emitter: UsageEmitter, feed: BudgetFeed) -> None:
    stats = emitter.stats
    metrics.watch(
        "tollgate_gateway_events_emitted",
        "Usage events the broker acknowledged",
        lambda: stats.emitted,
    )
    metrics.watch(
        "tollgate_gateway_events_spooled",
        "Usage events written to the spool",
        lambda: stats.spooled,
    )
    metrics.watch(
        "tollgate_gateway_events_dropped",
        "Usage events lost to a full spool",
        lambda: stats.dropped,
    )
    metrics.watch(
        "tollgate_gateway_spool_bytes", "Bytes waiting in the spool", lambda: stats.spool_bytes
    )
