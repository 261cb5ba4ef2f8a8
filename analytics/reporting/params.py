"""The reporting API's query parameters: validated here, before any query is built.

Every parameter is typed, bounded and documented (the OpenAPI page shows these
descriptions). Group-by dimensions and filters come only from the allowlist
(``analytics.queries.Dimension``); filter values travel to DuckDB as parameters, never as
SQL text. A parameter the endpoint does not take, or a single-valued one given twice, is
refused with 422 rather than ignored: a typo must not silently widen a report.

Filters are one query parameter per dimension, repeatable: ``?model=gpt-4o&model=o3&team=
search`` keeps rows whose model is gpt-4o *or* o3, *and* whose team is search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints
from starlette.routing import Route

from analytics.queries import Dimension, Filters, QueryError
from analytics.query_parts import EPOCH, instant
from analytics.time_buckets import time_zone as known_time_zone

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000
DEFAULT_RANGE = timedelta(days=30)
MAX_FILTER_VALUES = 100

_SPACE_FOR_PLUS = re.compile(r"^(.*\d) (\d{2}(:?\d{2})?)$")


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _plus_from_space(value: Any) -> Any:
    """``…T09:00:00 02:00`` → ``…T09:00:00+02:00``: an unescaped ``+`` in a query string
    arrives as a space, and the caller meant the offset.

    Only ISO-8601 text is an instant here, as the OpenAPI document says (``date-time``):
    pydantic would also read ``0`` or ``1700000000`` as Unix seconds, which is refused."""
    if isinstance(value, str):
        value = _SPACE_FOR_PLUS.sub(r"\1+\2", value.strip())
        if not _ISO_DATE.match(value):
            raise ValueError(
                "must be an ISO-8601 instant with an offset, e.g. 2026-03-01T00:00:00Z"
            )
        return value
    return value


def _in_range(value: datetime) -> datetime:
    """A ``ValueError`` (a 422 naming the parameter) for an instant the queries refuse:
    before 1970, or so near the ends of the calendar that it has no UTC date
    (``0001-01-01T00:00:00+14:00``)."""
    try:
        instant(value, "the instant")
    except QueryError as error:
        raise ValueError(str(error).removeprefix("the instant ")) from None
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_plus_from_space), AfterValidator(_in_range)]
"""An ISO-8601 instant that names its offset (``Z`` or ``+02:00``), from 1970 to 9998."""
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def invalid(parameter: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 naming ``parameter``, shaped like FastAPI's own validation errors."""
    error = {"loc": ("query", parameter), "msg": message, "type": "value_error"}
    if value is not None:
        error["input"] = value
    return RequestValidationError([error])


@dataclass(frozen=True)
class TimeRange:
    """``[start, end)``, both timezone-aware."""

    start: datetime
    end: datetime


def time_range(
    start: Annotated[
        Instant | None,
        Query(
            description="Start of the range, inclusive: ISO-8601 with an offset, e.g. "
            "`2026-03-01T00:00:00Z`. Default: 30 days before `end`."
        ),
    ] = None,
    end: Annotated[
        Instant | None,
        Query(description="End of the range, exclusive, with an offset. Default: now."),
    ] = None,
) -> TimeRange:
    end = end or datetime.now(UTC)
    start = start or max(end - DEFAULT_RANGE, EPOCH)
    if end < start:
        raise invalid(
            "end", "must be after `start`, or equal to it (an empty range)", end.isoformat()
        )
    return TimeRange(start, end)


def time_zone(
    tz: Annotated[
        str,
        Query(
            max_length=64,
            description="IANA time zone that buckets are cut in (e.g. `Europe/Paris`).",
        ),
    ] = "UTC",
) -> str:
    try:
        return known_time_zone(tz)
    except QueryError:
        raise invalid("tz", "unknown time zone; use an IANA name such as `UTC`", tz) from None


def group_by(
    group_by: Annotated[
        list[Dimension],
        Query(
            max_length=len(Dimension),
            description="Dimension to group by; repeat for several, e.g. "
            "`group_by=tenant&group_by=model`.",
            json_schema_extra={"uniqueItems": True},
        ),
    ] = [],  # noqa: B006 - FastAPI copies parameter defaults
) -> list[Dimension]:
    if len(set(group_by)) != len(group_by):
        raise invalid("group_by", "names a dimension twice", [d.value for d in group_by])
    return group_by


def _filter_doc(what: str) -> Any:
    return Query(
        max_length=MAX_FILTER_VALUES,
        description=f"Keep only rows of this {what}; repeat for several (OR).",
    )


def filters(
    tenant: Annotated[list[FilterValue], _filter_doc("tenant")] = [],  # noqa: B006
    team: Annotated[list[FilterValue], _filter_doc("team")] = [],  # noqa: B006
    api_key_id: Annotated[list[FilterValue], _filter_doc("API key id")] = [],  # noqa: B006
    user: Annotated[list[FilterValue], _filter_doc("user")] = [],  # noqa: B006
    model: Annotated[list[FilterValue], _filter_doc("model")] = [],  # noqa: B006
    provider: Annotated[list[FilterValue], _filter_doc("provider")] = [],  # noqa: B006
    status: Annotated[list[FilterValue], _filter_doc("call status (e.g. `ok`)")] = [],  # noqa: B006
    operation: Annotated[list[FilterValue], _filter_doc("operation (e.g. `chat`)")] = [],  # noqa: B006
    backend: Annotated[list[FilterValue], _filter_doc("backend")] = [],  # noqa: B006
) -> Filters:
    """Filters on the allowlisted dimensions (AND across dimensions)."""
    given = {
        Dimension.TENANT: tenant,
        Dimension.TEAM: team,
        Dimension.API_KEY: api_key_id,
        Dimension.USER: user,
        Dimension.MODEL: model,
        Dimension.PROVIDER: provider,
        Dimension.STATUS: status,
        Dimension.OPERATION: operation,
        Dimension.BACKEND: backend,
    }
    return {dimension: values for dimension, values in given.items() if values}


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def page(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page, at most {MAX_LIMIT}.")
    ] = DEFAULT_LIMIT,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=2**53,
            description="Rows to skip: the previous page's `next_offset`.",
        ),
    ] = 0,
) -> Page:
    return Page(limit, offset)


def reject_unknown_parameters(request: Request) -> None:
    """422 for a query parameter the endpoint does not take, or a single one given twice."""
    route = request.scope.get("route")
    dependant: Dependant | None = getattr(route, "dependant", None)
    if not isinstance(route, Route) or dependant is None:
        return
    taken = _query_parameters(dependant)
    for name in request.query_params:
        if name not in taken:
            known = ", ".join(f"`{n}`" for n in sorted(taken)) or "none"
            raise invalid(name, f"unknown query parameter; this endpoint takes {known}")
        if not taken[name] and len(request.query_params.getlist(name)) > 1:
            raise invalid(name, "given more than once; it takes one value")


def _query_parameters(dependant: Dependant) -> dict[str, bool]:
    """Query parameter name → whether it may repeat, over ``dependant`` and its dependencies."""
    found: dict[str, bool] = {}
    for field in dependant.query_params:
        annotation = getattr(field, "field_info", None)
        kind = getattr(annotation, "annotation", None)
        found[field.alias] = getattr(kind, "__origin__", None) is list
    for sub in dependant.dependencies:
        found.update(_query_parameters(sub))
    return found
