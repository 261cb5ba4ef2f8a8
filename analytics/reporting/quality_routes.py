"""``/v1/quality`` and ``/v1/latency``: what the calls were worth, beside what they cost.

The questions of ``analytics.quality_queries``, served as ``routes`` serves the others:
the same keys, tenant scope, parameters, paging and formats, and an answer equal to
``Lake.arrow(quality_queries.X(...))`` for the same arguments.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from analytics import quality_queries
from analytics.queries import Dimension, Granularity
from analytics.reporting.params import reject_unknown_parameters, time_zone
from analytics.reporting.routes import (
    _TABLE,
    CallerDep,
    FiltersDep,
    FormatDep,
    GroupsDep,
    PageDep,
    RangeDep,
    answer,
    authenticate,
)

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(authenticate), Depends(reject_unknown_parameters)],
    responses=_TABLE,
)

Name = Annotated[str, Query(min_length=1, max_length=256)]
GranularityParam = Annotated[
    Granularity | None,
    Query(description="Cut the range into buckets (local time in `tz`); omit for totals."),
]


@router.get("/quality", summary="Evaluation rates and means, coverage, cost per good answer")
def quality(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
    tz: Annotated[str, Depends(time_zone)],
    evaluation: Annotated[
        str,
        Query(
            min_length=1,
            max_length=256,
            description="The evaluation name: `hallucination`, `groundedness`, `user_feedback`…",
        ),
    ],
    label: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="The label whose rate is asked (`hallucinated`); a call carrying it "
            "is not a good answer.",
        ),
    ] = None,
    good_min_score: Annotated[
        float | None,
        Query(allow_inf_nan=False, description="The lowest score of a good answer."),
    ] = None,
    tag: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Group by this tag's value.")
    ] = None,
    granularity: GranularityParam = None,
) -> Response:
    query = quality_queries.quality(
        window.start,
        window.end,
        evaluation=evaluation,
        label=label,
        good_min_score=good_min_score,
        group_by=groups,
        tag=tag,
        granularity=granularity,
        tz=tz,
        filters=where,
        tenant_scope=caller.tenant,
    )
    return answer(request, query, paging, fmt, caller)


@router.get("/latency", summary="Time to first token and output tokens per second")
def latency(
    request: Request,
    caller: CallerDep,
    window: RangeDep,
    groups: GroupsDep,
    where: FiltersDep,
    paging: PageDep,
    fmt: FormatDep,
    tz: Annotated[str, Depends(time_zone)],
    granularity: GranularityParam = None,
) -> Response:
    query = quality_queries.latency(
        window.start,
        window.end,
        group_by=groups or (Dimension.MODEL, Dimension.BACKEND),
        granularity=granularity,
        tz=tz,
        filters=where,
        tenant_scope=caller.tenant,
    )
    return answer(request, query, paging, fmt, caller)
