"""The reporting API as one ASGI app: ``/v1`` queries, the dashboard, health and metrics.

- ``/v1/…``: the questions of ``analytics.queries`` (see ``routes``), behind reporting keys.
- ``/dashboard/``: one offline page (``analytics/dashboard/``) drawing the same answers;
  ``/`` redirects there. Its assets are served from here, and its Content-Security-Policy
  allows nothing from elsewhere.
- ``/healthz``: 200 while the lake answers a query, else 503. No key needed.
- ``/metrics``: Prometheus text. No key needed; it holds counts, never rows.
- ``/docs``, ``/openapi.json``: the OpenAPI description, browsable with Swagger UI, whose
  assets are served from this app (``/docs-assets``, from the ``swagger-ui-bundle``
  package): like the dashboard, the page works with no internet.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from analytics.lake_db import Lake
from analytics.reporting.auth import KeyRing
from analytics.reporting.errors import install_error_handlers
from analytics.reporting.export_routes import export_router
from analytics.reporting.metrics import MetricsMiddleware, ReportingMetrics
from analytics.reporting.quality_routes import router as quality_router
from analytics.reporting.routes import router
from tollgate import __version__
from tollgate.pricing import PriceCatalog

log = logging.getLogger("tollgate.reporting")

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"

_DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_DESCRIPTION = """\
Spend, tokens, unit costs, cache savings, errors, budgets, alerts, quality and latency from
the Tollgate lake.

Send a reporting key as `Authorization: Bearer <key>` or `x-api-key: <key>`. An admin key
sees every tenant; a tenant key sees only its tenant's rows, whatever the filters say.

Time ranges are `[start, end)` on the instant a call ended, ISO-8601 with an offset
(`2026-03-01T00:00:00Z`; in a URL write `+` as `%2B`). Filters: one parameter per
dimension, repeatable (`model=gpt-4o&model=o3&team=search`). Pages: `limit` and `offset`;
JSON answers give `next_offset` and `next` while rows remain. Formats: `format=json|csv|
parquet|arrow` or the Accept header. Money is exact: decimal strings in JSON and CSV,
`decimal128` in Parquet and Arrow.
"""


class _DashboardFiles(StaticFiles):
    """Static files with headers that keep the page offline and un-framed."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_DASHBOARD_HEADERS)
        return response


def create_app(
    lake_path: Path,
    keys: KeyRing,
    *,
    lake: Lake | None = None,
    catalog: PriceCatalog | None = None,
    catalogs: Mapping[str, PriceCatalog] | None = None,
) -> FastAPI:
    """The reporting app over the lake at ``lake_path``.

    The app opens the lake itself (with ``catalog``, default the shipped one, for list
    prices) and closes it at shutdown, unless given one in ``lake``. ``catalogs`` are
    the named catalogs ``/v1/spend?catalog=`` prices under.
    """
    owned = lake is None
    opened = Lake(lake_path, catalog=catalog) if lake is None else lake

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                opened.close()

    metrics = ReportingMetrics()
    app = FastAPI(
        title="Tollgate reporting API",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served below, from local assets
        redoc_url=None,
    )
    app.state.lake = opened
    app.state.keys = keys
    app.state.catalogs = dict(catalogs or {})
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics, mounts=("/dashboard",))
    app.include_router(router)
    app.include_router(export_router)
    app.include_router(quality_router)

    @app.get("/healthz", include_in_schema=True, summary="Whether the lake can be read")
    def healthz() -> JSONResponse:
        if not lake_path.is_dir():
            return JSONResponse({"status": "unavailable", "detail": "lake not found"}, 503)
        try:
            opened.sql("SELECT count(*) AS n FROM priced_usage WHERE false")
        except Exception as error:  # any failure means "not healthy"; the log says which
            log.warning("lake unreadable: %s", error)
            return JSONResponse({"status": "unavailable", "detail": "lake unreadable"}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("dashboard/")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), "docs-assets")
    app.mount("/dashboard", _DashboardFiles(directory=DASHBOARD_DIR, html=True), "dashboard")
    return app
