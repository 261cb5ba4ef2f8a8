"""The ``/v1`` endpoints: the questions of ``analytics.queries``, over HTTP.

Each endpoint validates its parameters (``params``), builds one ``Query`` with the
caller's tenant as ``tenant_scope``, runs one page of it on the lake and writes it in the
asked format (``output``). The API adds nothing to the numbers: an answer equals
``Lake.arrow(queries.X(...))`` for the same arguments.

Tenant keys: every query is scoped to the key's tenant, so a filter naming another
tenant (``tenant=globex``) matches no rows, and a budget of another tenant answers 404,
exactly as one that does not exist.

Budgets are asked about at an instant (``at``, default now): ``/v1/budgets`` lists the
subjects whose window contains it, and a burn-down of a budget with no such window
visible to the key answers 404.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.responses import Response

from analytics import queries
from analytics.queries import Dimension, Filters, Granularity, Measure
from analytics.reporting.auth import Caller
from analytics.reporting.catalogs import spend_under
from analytics.reporting.errors import IsolationBreach
from analytics.reporting.metrics import endpoint_of
from analytics.reporting.output import MEDIA_TYPES, OutputFormat, negotiate, render
from analytics.reporting.params import (
    Instant,
    Page,
    TimeRange,
    filters,
    group_by,
    invalid,
    page,
    reject_unknown_parameters,
    time_range,
    time_zone,
)
from tollgate.contract import AlertKind, BudgetStatus

_BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <reporting key>`")
_API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="A reporting key.")


def authenticate(
    request: Request,
    _bearer: Annotated[object, Security(_BEARER)] = None,
    _api_key: Annotated[object, Security(_API_KEY_HEADER)] = None,
) -> Caller:
    """The caller behind the request's key (401 without a known one).

    The two security parameters only describe the schemes in the OpenAPI document; the
    key ring reads the headers itself.
    """
    return request.app.state.keys.authenticate(request.headers)


def output_format(
    request: Request,
    requested: Annotated[
        OutputFormat | None,
        Query(
            alias="format",
            description="`json`, `csv`, `parquet` or `arrow` (IPC stream). "
            "Default: from the Accept header, else JSON.",
        ),
    ] = None,
) -> OutputFormat:
    return negotiate(requested, request.headers.get("accept"))


CallerDep = Annotated[Caller, Depends(authenticate)]
RangeDep = Annotated[TimeRange, Depends(time_range)]
GroupsDep = Annotated[list[Dimension], Depends(group_by)]
FiltersDep = Annotated[Filters, Depends(filters)]
PageDep = Annotated[Page, Depends(page)]
FormatDep = Annotated[OutputFormat, Depends(output_format)]

_TABLE = {
    200: {
        "description": "One page of rows; JSON also lists the columns and the next page.",
        "content": {media: {} for media in MEDIA_TYPES.values()},
    },
    401: {"description": "No reporting key, or an unknown one."},
    406: {"description": "The Accept header names no format this API writes."},
    422: {"description": "A parameter is invalid; `detail` names it."},
}

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(authenticate), Depends(reject_unknown_parameters)],
    responses=_TABLE,
)


def answer(
    request: Request, query: queries.Query, paging: Page, fmt: OutputFormat, caller: Caller
) -> Response:
    """Run one page of ``query`` and write it; ``next_offset`` is set while rows remain."""
    started = time.perf_counter()
    table = request.app.state.lake.arrow(query, limit=paging.limit + 1, offset=paging.offset)
    return answer_rows(request, table, paging, fmt, caller, started)


def answer_rows(
    request: Request,
    table: pa.Table,
    paging: Page,
    fmt: OutputFormat,
    caller: Caller,
    started: float,
) -> Response:
    """Write one page: ``table`` holds the page's rows and, if more remain, one more."""
    endpoint = endpoint_of(request.scope)
    more = table.num_rows > paging.limit
    table = table.slice(0, paging.limit)
    request.app.state.metrics.observe_query(endpoint, time.perf_counter() - started, len(table))
    if caller.tenant is not None and "tenant" in table.column_names:
        seen = set(table.column("tenant").drop_null().unique().to_pylist())
        if seen - {caller.tenant}:
            raise IsolationBreach(f"{endpoint} answered {caller.key_id} with other tenants")
    next_offset = paging.offset + paging.limit if more else None
    next_url = None
    if next_offset is not None:
        url = request.url.include_query_params(offset=next_offset)
        next_url = f"{url.path}?{url.query}"
    name = endpoint.rsplit("/", 1)[-1]
    return render(table, fmt, name=name, next_offset=next_offset, next_url=next_url)


@router.get("/spend", summary="Spend and tokens per group and time bucket")
def spend(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
    tz: Annotated[str, Depends(time_zone)],
    granularity: Annotated[
        Granularity | None,
        Query(description="Cut the range into buckets (local time in `tz`); omit for totals."),
    ] = None,
    catalog: Annotated[
        str | None,
        Query(
            max_length=128,
            description="Price the range again under this catalog of `reporting.catalogs_dir`"
            " (totals per group: `cost_usd`, `list_cost_usd`, `billed_cost_usd`; not with"
            " `granularity`).",
        ),
    ] = None,
) -> Response:
    if catalog is not None:
        if granularity is not None:
            raise invalid("granularity", "is not taken with `catalog` (totals per group only)")
        started = time.perf_counter()
        table = spend_under(
            request,
            catalog,
            start=window.start,
            end=window.end,
            group_by=groups,
            filters=where,
            tenant_scope=caller.tenant,
        )
        page_rows = table.slice(paging.offset, paging.limit + 1)
        return answer_rows(request, page_rows, paging, fmt, caller, started)
    query = queries.spend(
        window.start,
        window.end,
        group_by=groups,
        granularity=granularity,
        tz=tz,
        filters=where,
        tenant_scope=caller.tenant,
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/top", summary="The largest spenders of one dimension")
def top(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
    by: Annotated[Dimension, Query(description="The dimension to rank.")],
    n: Annotated[int, Query(ge=1, le=1000, description="How many to rank.")] = 10,
    measure: Annotated[Measure, Query(description="What to rank by.")] = Measure.COST,
) -> Response:
    query = queries.top_spenders(
        window.start,
        window.end,
        by=by,
        n=n,
        measure=measure,
        filters=where,
        tenant_scope=caller.tenant,
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/unit-costs", summary="Cost per request and per 1k tokens")
def unit_costs(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
) -> Response:
    query = queries.unit_costs(
        window.start, window.end, group_by=groups, filters=where, tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/cache-savings", summary="What prompt caching saved")
def cache_savings(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
) -> Response:
    query = queries.cache_savings(
        window.start, window.end, group_by=groups, filters=where, tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/errors", summary="Calls that did not end ok, per status")
def errors(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
) -> Response:
    # Errors are grouped by status always: naming it as well changes nothing.
    groups = [group for group in groups if group is not Dimension.STATUS]
    query = queries.errors(
        window.start, window.end, group_by=groups, filters=where, tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


BudgetId = Annotated[
    str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", description="A budget's id.")
]


@router.get("/budgets", summary="Where every budget subject stands now (or at `at`)")
def budgets(
    request: Request,
    caller: CallerDep,
    paging: PageDep,
    fmt: FormatDep,
    budget_id: BudgetId | None = None,
    status: Annotated[BudgetStatus | None, Query(description="Only this status.")] = None,
    at: Annotated[
        Instant | None,
        Query(
            description="Show the subjects whose window contains this instant, each at its "
            "latest state in that window. Default: now (windows that have ended are left out)."
        ),
    ] = None,
) -> Response:
    query = queries.budget_status(
        at=at, budget_id=budget_id, status=status, tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


@router.get(
    "/budgets/{budget_id}/burn",
    summary="Burn-down of a budget's current window",
    responses={404: {"description": "No such budget with a window at `at` visible to this key."}},
)
def budget_burn(
    request: Request,
    caller: CallerDep,
    paging: PageDep,
    fmt: FormatDep,
    budget_id: Annotated[
        str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$", description="A budget's id.")
    ],
    subject: Annotated[
        str | None,
        Query(max_length=1024, description="One subject, e.g. `tenant=acme,team=search`."),
    ] = None,
    at: Annotated[
        Instant | None, Query(description="An instant inside the window. Default: now.")
    ] = None,
    granularity: Annotated[Granularity, Query(description="Bucket size.")] = Granularity.HOUR,
) -> Response:
    moment = at or datetime.now(UTC)
    visible = request.app.state.lake.arrow(
        queries.budget_status(at=moment, budget_id=budget_id, tenant_scope=caller.tenant), limit=1
    )
    if visible.num_rows == 0:
        raise HTTPException(
            404,
            f"no budget {budget_id!r} with a window at {moment.isoformat()} is visible to this key",
        )
    query = queries.budget_burn(
        budget_id, subject, at=moment, granularity=granularity, tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/alerts", summary="Alerts raised in the range, newest first")
def alerts(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    paging: PageDep,
    fmt: FormatDep,
    kind: Annotated[
        list[AlertKind], Query(description="Only alerts of this kind; repeat for several.")
    ] = [],  # noqa: B006 - FastAPI copies parameter defaults
) -> Response:
    query = queries.recent_alerts(
        window.start, window.end, kinds=[k.value for k in kind], tenant_scope=caller.tenant
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/whoami", summary="The caller's key id and tenant scope", responses={200: {}})
def whoami(caller: CallerDep) -> dict[str, object]:
    return {"key_id": caller.key_id, "tenant": caller.tenant, "admin": caller.admin}
