"""The gateway as an aiohttp application: its endpoints and its lifecycle.

Start-up opens the upstream connection pool, the usage emitter (which spools to disk
when the broker is away), the budget feed (states, definitions, the other instances'
claims) and the claims announcer; shutdown closes them in reverse, flushing every usage
event to the broker or the spool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from gateway.auth import Authenticator
from gateway.bedrock import BedrockBackends
from gateway.budget_book import BudgetBook
from gateway.budget_feed import BudgetFeed
from gateway.budget_shares import ShareView
from gateway.claims_announcer import ClaimsAnnouncer
from gateway.draining import Drain
from gateway.emitter import UsageEmitter
from gateway.endpoints import (
    AI_ENDPOINTS,
    MODEL_LIST_PATHS,
    MODEL_PATHS,
    Endpoint,
    guess_dialect,
    guess_operation,
)
from gateway.errors import Dialect, GatewayError, MethodNotAllowed, NotFound
from gateway.evaluations import PATH as EVALUATIONS_PATH
from gateway.evaluations import EvaluationDesk
from gateway.latency_metrics import LatencyMetrics
from gateway.metrics import GatewayMetrics
from gateway.model_api import (
    count_tokens_handler,
    list_models_handler,
    retrieve_model_handler,
)
from gateway.model_list import ModelDirectory
from gateway.proxy import Proxy
from gateway.rate_limit import RateLimiter
from gateway.request_ids import RequestIds, load_key
from gateway.routes import RoutesConfig
from gateway.routing import Router
from gateway.spend import SpendEstimator
from gateway.spool import Spool
from gateway.upstream_client import UpstreamClient
from tollgate.budget_definitions import load_budgets
from tollgate.ids import uuid7
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

PROXY = web.AppKey("proxy", Proxy)
FEED = web.AppKey("feed", BudgetFeed)
DRAIN = web.AppKey("drain", Drain)
ANNOUNCER = web.AppKey("announcer", ClaimsAnnouncer)
EVALUATIONS = web.AppKey("evaluations", EvaluationDesk)

EMITTER_STOP_S = 3.0
"""At stop, how long the emitter may keep shipping; what is left waits in its log."""


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
        stop_timeout_s=EMITTER_STOP_S,
        sync_every_s=settings.gateway.spool_fsync_s,
        spool=Spool(
            settings.gateway.spool_dir,
            max_bytes=settings.gateway.spool_max_bytes,
            retain_s=settings.gateway.spool_retain_s,
            refused_share=settings.gateway.spool_refused_share,
            synchronous=settings.gateway.spool_fsync_s == 0,
        ),
    )
    gateway = settings.gateway
    instance_id = f"gw-{uuid7()}"
    shares = ShareView(
        instance_id,
        period_s=gateway.budget_share_period_s,
        delay_s=gateway.budget_share_delay_s,
        ttl_s=gateway.budget_share_ttl_s,
    )
    book = BudgetBook(
        fail_open=gateway.budget_fail_open,
        definitions=load_budgets(settings.stream.budgets_file)
        if settings.stream.budgets_file
        else (),
        shares=shares,
    )
    feed = BudgetFeed(
        settings.kafka,
        parts.bootstrap_servers,
        topics.budget_state,
        book,
        definitions_topic=topics.budget_definitions,
        claims_topic=topics.gateway_claims,
        shares=shares,
    )
    announcer = ClaimsAnnouncer(
        settings.kafka,
        parts.bootstrap_servers,
        topics.gateway_claims,
        book,
        instance_id,
        gateway.budget_share_period_s,
    )
    request_ids = RequestIds(
        load_key(
            _secret(settings.gateway.request_id_key),
            settings.gateway.effective_request_id_key_file,
        )
    )
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
        bedrock=BedrockBackends.from_routes(parts.routes, parts.secrets),
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
                retain_s=settings.gateway.spool_retain_s,
                synchronous=settings.gateway.spool_fsync_s == 0,
            ),
            stop_timeout_s=EMITTER_STOP_S,
            sync_every_s=settings.gateway.spool_fsync_s,
        ),
        max_body_bytes=settings.gateway.max_body_bytes,
    )
    app[PROXY] = proxy
    app[EVALUATIONS] = evaluations
    app[FEED] = feed
    app[DRAIN] = drain = Drain()
    app[ANNOUNCER] = announcer
    _watch_components(metrics, emitter, feed)

    for path, endpoint in AI_ENDPOINTS.items():
        app.router.add_post(path, drain.guard(_call_handler(proxy, endpoint), endpoint.dialect))
    directory = ModelDirectory(parts.routes, dict(parts.secrets))
    for path in MODEL_LIST_PATHS:
        app.router.add_get(path, list_models_handler(proxy, directory))
    for path in MODEL_PATHS:
        app.router.add_get(path, retrieve_model_handler(proxy, directory))
    app.router.add_post("/v1/messages/count_tokens", count_tokens_handler(proxy))
    app.router.add_post(EVALUATIONS_PATH, drain.guard(evaluations.handle, Dialect.OPENAI))
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
    await app[ANNOUNCER].start()
    yield
    await app[ANNOUNCER].stop()
    await feed.stop()
    await evaluations.emitter.stop()
    await proxy.emitter.stop()
    await proxy.upstream.close()


def _call_handler(proxy: Proxy, endpoint: Endpoint):  # type: ignore[no-untyped-def]
    operation, dialect = endpoint.operation, endpoint.dialect

    async def handle(request: web.Request) -> web.StreamResponse:
        return await proxy.handle(request, operation, dialect, endpoint)

    return handle


async def _no_such_endpoint(request: web.Request) -> web.Response:
    """Unknown paths and wrong methods, answered as OpenAI or Anthropic would; a caller
    with valid credentials gets a usage event for it, like any other call."""
    path = request.path
    dialect = guess_dialect(path, "anthropic-version" in request.headers)
    known = path in AI_ENDPOINTS or path in MODEL_LIST_PATHS or path == EVALUATIONS_PATH
    error: GatewayError = (
        MethodNotAllowed(f"{request.method} is not allowed on {path}")
        if known
        else NotFound(f"unknown endpoint {request.method} {path}")
    )
    return await request.app[PROXY].refuse_unrouted(request, error, guess_operation(path), dialect)


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
        # Its claims are back from the broker: it has a share of every budget.
        "budget_shares": proxy.budgets.joined,
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
        "Usage events written to the write-ahead log (the spool)",
        lambda: stats.spooled,
    )
    metrics.watch(
        "tollgate_gateway_spool_writes",
        "Writes (fsyncs) to the write-ahead log; events spooled per write is the group size",
        lambda: stats.writes,
    )
    metrics.watch(
        "tollgate_gateway_events_dropped",
        "Usage events lost to a full spool",
        lambda: stats.dropped,
    )
    metrics.watch(
        "tollgate_gateway_events_resent",
        "Shipped usage events shipped again to a broker that lost them",
        lambda: stats.resent,
    )
    metrics.watch(
        "tollgate_gateway_spool_bytes",
        "Bytes in the spool not yet shipped",
        lambda: stats.spool_bytes,
    )
