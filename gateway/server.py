"""Running the gateway as a process: resolve its parts, serve until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Mapping

from aiohttp import web

from gateway.app import DRAIN, GatewayParts, create_app
from gateway.http_server import GatewayRunner
from gateway.routes import backend_secrets, load_routes
from tollgate.errors import SettingsError
from tollgate.settings import Settings

log = logging.getLogger("tollgate.gateway")

SWITCH_INTERVAL_S = 0.0005
DRAIN_S = 5.0
"""How long calls in flight may take to finish once stopping began. With the emitter's
own bound, the gateway exits within 10 s of SIGTERM."""


def resolve_parts(
    settings: Settings, environ: Mapping[str, str], bootstrap_servers: str
) -> GatewayParts:
    """Read the routes file and the backend credentials it names; fail fast if absent."""
    if settings.gateway.routes_file is None:
        raise SettingsError(
            "the gateway needs a routes file: set TOLLGATE_GATEWAY_ROUTES_FILE "
            "(or gateway.routes_file in the config file)"
        )
    routes = load_routes(settings.gateway.routes_file)
    return GatewayParts(settings, routes, backend_secrets(routes, environ), bootstrap_servers)


async def serve(parts: GatewayParts, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM; then drain, flush usage events and stop."""
    # The write-ahead log's writer thread needs the GIL for a moment after each write;
    # with the default 5 ms switch interval a busy event loop would hold every group
    # commit (and the calls waiting on it) that long.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    app = create_app(parts)
    # handler_cancellation: a client that goes away cancels its call, and so the upstream one.
    runner = GatewayRunner(
        app, parts.settings.gateway, shutdown_timeout=1, handler_cancellation=True
    )
    await runner.setup()
    gateway = parts.settings.gateway
    site = web.TCPSite(runner, gateway.host, gateway.port, backlog=1024, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    port = runner.addresses[0][1] if runner.addresses else gateway.port
    log.warning("gateway listening on http://%s:%s", gateway.host, port)
    print(f"gateway listening on http://{gateway.host}:{port}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
        drain = app[DRAIN]
        drain.stop_taking_calls()
        log.warning(
            "gateway stopping: new calls get 503; %d call(s) in flight get %.0f s to finish",
            drain.in_flight,
            DRAIN_S,
        )
        if not await drain.wait_idle(DRAIN_S):
            log.warning("gateway stopping: %d call(s) still in flight are cut", drain.in_flight)
    finally:
        await runner.cleanup()


def run(parts: GatewayParts) -> None:
    try:
        import uvloop

        uvloop.run(serve(parts))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(parts))
