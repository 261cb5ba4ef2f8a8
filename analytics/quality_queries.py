"""Quality beside cost: evaluation rates, mean scores, coverage, cost per good answer,
and the latency figures (time to first token, output tokens per second).

Written as ``analytics.queries`` writes its questions (a ``Query`` of parameterised SQL,
allowlisted columns, ``tenant_scope``), over the ``priced_usage`` and ``evaluations``
views. The range is on the *call*'s ``end_time``, as for spend, so a quality figure and
a spend figure of one range describe the same calls; an evaluation counts whenever it
arrived.

One call, one verdict: a call may have several evaluations of one name (a judge re-run,
a user changing their mind; none erases another), so each call's evaluations of the
asked name are first folded into one verdict: it is *labelled* when any of them carries
``label``, and its score is the mean of their ``score_value``. Rates and means are then
over evaluated calls, each counted once. Only answered calls (``status = 'ok'``) count:
a refused call has no answer to judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from analytics import query_parts as parts
from analytics.query_parts import listed, order
from analytics.query_terms import Dimension, Filters, Granularity, Query, QueryError
from analytics.time_buckets import bucket_plan, time_zone

__all__ = ["latency", "quality"]


def quality(
    start: datetime,
    end: datetime,
    *,
    evaluation: str,
    label: str | None = None,
    good_min_score: float | None = None,
    group_by: Sequence[Dimension | str] = (),
    tag: str | None = None,
    granularity: Granularity | str | None = None,
    tz: str = "UTC",
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Rates and means of the evaluation named ``evaluation``, per group and time bucket.

    ``label`` is the verdict whose rate is asked (``hallucinated``); ``good_min_score``,
    if given, is the lowest score that makes an answer good. A *good answer* is an
    evaluated call not labelled ``label`` whose score (if ``good_min_score`` is given)
    reaches it. ``tag`` groups by the value of that tag (column ``tag``).

    Columns: ``bucket`` (with ``granularity``), groups, ``tag`` (with ``tag``), then
    ``calls`` (answered calls), ``evaluated_calls``, ``coverage`` (evaluated / calls),
    ``evaluations`` (records, several per call possible), ``labelled_calls``,
    ``label_rate`` (labelled / evaluated; null without ``label`` or evaluated calls),
    ``mean_score`` (over evaluated calls with a score), ``cost_usd`` (all calls),
    ``evaluated_cost_usd``, ``good_calls``, ``cost_per_good_answer``
    (``evaluated_cost_usd / good_calls``: what one good answer costs, judged on the
    evaluated sample; null when there is none). Groups with no answered call are absent.
    """
    name = parts.name(evaluation, "evaluation")
    wanted = None if label is None else parts.name(label, "label")
    floor = _score(good_min_score)
    dims = parts.dimensions(group_by)
    tag_key = None if tag is None else parts.name(tag, "tag")
    grain = parts.granularity(granularity)
    zone = time_zone(tz)
    first, last = parts.time_range(start, end, grain)
    where = (
        parts.Where()
        .ended_in(first, last)
        .matching(parts.filter_values(filters))
        .scoped(tenant_scope)
        .add("status = 'ok'")
    )
    groups = [parts.column(d) for d in dims]
    selected = list(groups)
    tag_params: tuple[str, ...] = ()
    if tag_key is not None:
        selected.append("tags[?] AS tag")
        tag_params = (tag_key,)
    keys = [*(f'"{d.value}"' for d in dims), *(["tag"] if tag_key is not None else [])]
    plan = bucket_plan(zone, first, last, grain) if grain is not None else None
    slot = f"{plan.slot_sql} AS _slot, " if plan is not None else ""
    verdict_where = parts.Where().add("name = ?", name).add("date >= ?", first.date())
    verdict_where.scoped(tenant_scope)
    labelled = "bool_or(score_label = ?)" if wanted is not None else "false"
    good = "v.event_id IS NOT NULL AND NOT v.labelled"
    if floor is not None:
        good += " AND v.score >= ?"
    outer_keys = (["bucket"] if plan is not None else []) + keys
    bucket = f"{plan.bucket_sql} AS bucket, " if plan is not None else ""
    sql = (
        f"WITH calls AS (SELECT {slot}{listed(selected)}event_id, tenant, cost_usd "
        f"FROM priced_usage {where.sql()}), "
        f"verdicts AS (SELECT event_id, tenant, count(*) AS evaluations, "
        f"{labelled} AS labelled, avg(score_value) AS score "
        f"FROM evaluations {verdict_where.sql()} GROUP BY event_id, tenant), "
        f"judged AS (SELECT c.*, v.event_id AS judged_id, v.evaluations, v.labelled, v.score, "
        f"({good}) AS good FROM calls c LEFT JOIN verdicts v "
        f"ON v.event_id = c.event_id AND v.tenant IS NOT DISTINCT FROM c.tenant) "
        f"SELECT {bucket}{listed(keys)}count(*) AS calls, "
        f"count(judged_id) AS evaluated_calls, "
        f"CAST(count(judged_id) AS DOUBLE) / count(*) AS coverage, "
        f"CAST(coalesce(sum(evaluations), 0) AS BIGINT) AS evaluations, "
        f"count(*) FILTER (WHERE labelled) AS labelled_calls, "
        f"{'' if wanted is not None else 'NULL + '}"
        f"CAST(count(*) FILTER (WHERE labelled) AS DOUBLE) / nullif(count(judged_id), 0) "
        f"AS label_rate, avg(score) AS mean_score, sum(cost_usd) AS cost_usd, "
        f"coalesce(sum(cost_usd) FILTER (WHERE judged_id IS NOT NULL), "
        f"CAST(0 AS DECIMAL(38, 12))) AS evaluated_cost_usd, "
        f"count(*) FILTER (WHERE good) AS good_calls, "
        f"CAST(sum(cost_usd) FILTER (WHERE judged_id IS NOT NULL) AS DOUBLE) "
        f"/ nullif(count(*) FILTER (WHERE good), 0) AS cost_per_good_answer "
        f"FROM judged GROUP BY ALL {order(outer_keys)}"
    )
    params = (
        *(plan.slot_params if plan is not None else ()),
        *tag_params,
        *where.params,
        *((wanted,) if wanted is not None else ()),
        *verdict_where.params,
        *((floor,) if floor is not None else ()),
        *(plan.bucket_params if plan is not None else ()),
    )
    return Query(sql, params, tuple(outer_keys))


def latency(
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = (Dimension.MODEL, Dimension.BACKEND),
    granularity: Granularity | str | None = None,
    tz: str = "UTC",
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Time to first token and output speed of answered calls, per group and bucket.

    Output tokens per second of a call is ``output_tokens`` over the time after its first
    token (``duration_ms - ttft_ms``; the whole duration when it has no first-token time,
    as a call that was not streamed). The gateway's Prometheus histograms measure the same
    two figures per route model and backend.

    Columns: ``bucket`` (with ``granularity``), groups, ``calls``, ``streamed_calls``,
    ``ttft_ms_p50``, ``ttft_ms_p95``, ``ttft_ms_mean`` (over calls with a first-token
    time), ``output_tokens_per_s_p50``, ``output_tokens_per_s_mean`` (over calls that
    produced output), ``duration_ms_p50``.
    """
    dims = parts.dimensions(group_by)
    grain = parts.granularity(granularity)
    zone = time_zone(tz)
    first, last = parts.time_range(start, end, grain)
    where = (
        parts.Where()
        .ended_in(first, last)
        .matching(parts.filter_values(filters))
        .scoped(tenant_scope)
        .add("status = 'ok'")
    )
    groups = [parts.column(d) for d in dims]
    plan = bucket_plan(zone, first, last, grain) if grain is not None else None
    slot = f"{plan.slot_sql} AS _slot, " if plan is not None else ""
    bucket = f"{plan.bucket_sql} AS bucket, " if plan is not None else ""
    keys = (["bucket"] if plan is not None else []) + [f'"{d.value}"' for d in dims]
    speed = (
        "CASE WHEN output_tokens > 0 AND duration_ms - coalesce(ttft_ms, 0) > 0 "
        "THEN output_tokens * 1000.0 / (duration_ms - coalesce(ttft_ms, 0)) END"
    )
    sql = (
        f"WITH calls AS (SELECT {slot}{listed(groups)}streamed, ttft_ms, duration_ms, "
        f"{speed} AS output_tokens_per_s FROM priced_usage {where.sql()}) "
        f"SELECT {bucket}{listed(groups)}count(*) AS calls, "
        f"count(*) FILTER (WHERE streamed) AS streamed_calls, "
        f"quantile_cont(ttft_ms, 0.5) AS ttft_ms_p50, quantile_cont(ttft_ms, 0.95) AS ttft_ms_p95, "
        f"avg(ttft_ms) AS ttft_ms_mean, "
        f"quantile_cont(output_tokens_per_s, 0.5) AS output_tokens_per_s_p50, "
        f"avg(output_tokens_per_s) AS output_tokens_per_s_mean, "
        f"quantile_cont(duration_ms, 0.5) AS duration_ms_p50 "
        f"FROM calls GROUP BY ALL {order(keys)}"
    )
    params = (
        *(plan.slot_params if plan is not None else ()),
        *where.params,
        *(plan.bucket_params if plan is not None else ()),
    )
    return Query(sql, params, tuple(keys))


def _score(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise QueryError(f"good_min_score must be a number, got {value!r}")
    return float(value)
