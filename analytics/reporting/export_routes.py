"""``/v1/export/…``: the lake's costs as files for other tools (FinOps FOCUS).

An export is one file, not a page: the whole range answers at once, as CSV (default) or
Parquet, scoped to the key's tenant like every other answer. The range is at most
``MAX_EXPORT_DAYS`` long, so one request cannot read the whole history into memory.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from analytics.focus import focus_table
from analytics.reporting.errors import IsolationBreach
from analytics.reporting.output import OutputFormat, render
from analytics.reporting.params import TimeRange, invalid, reject_unknown_parameters, time_range
from analytics.reporting.routes import CallerDep, authenticate

MAX_EXPORT_DAYS = 93


class ExportFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


export_router = APIRouter(
    prefix="/v1/export",
    dependencies=[Depends(authenticate), Depends(reject_unknown_parameters)],
)


@export_router.get(
    "/focus",
    summary="Costs as FinOps FOCUS 1.2 rows (CSV or Parquet)",
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        401: {"description": "No reporting key, or an unknown one."},
        422: {"description": "A parameter is invalid; `detail` names it."},
    },
)
async def focus(
    request: Request,
    caller: CallerDep,
    window: Annotated[TimeRange, Depends(time_range)],
    fmt: Annotated[
        ExportFormat, Query(alias="format", description="`csv` (default) or `parquet`.")
    ] = ExportFormat.CSV,
) -> Response:
    if window.end - window.start > timedelta(days=MAX_EXPORT_DAYS):
        raise invalid("end", f"an export covers at most {MAX_EXPORT_DAYS} days")
    lake = request.app.state.lake
    table = await run_in_threadpool(
        focus_table, lake.path, lake.catalog, window.start, window.end, tenant_scope=caller.tenant
    )
    accounts = set(table.column("BillingAccountId").drop_null().to_pylist())
    if caller.tenant is not None and accounts - {caller.tenant}:
        raise IsolationBreach(f"/v1/export/focus answered {caller.key_id} with other tenants")
    return render(table, OutputFormat(fmt.value), name="focus", next_offset=None, next_url=None)
