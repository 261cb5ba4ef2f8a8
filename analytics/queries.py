"""The questions people ask of the lake, as parameterised SQL.

Each function validates its arguments and returns a ``Query``: SQL text with ``?``
placeholders and the values that fill them. Nothing here touches a database: ``Lake``
(``analytics.lake_db``) runs a query into a pandas DataFrame or an Arrow table, and the
reporting API pages and serialises the same queries. Column names in the SQL come only
from the allowlists below; every value a caller gives travels as a parameter.

Every function takes ``tenant_scope``: when set, only that tenant's rows are seen, whatever
the filters say. The reporting API sets it from the caller's key.

Time ranges are half-open, ``[start, end)``, on ``end_time`` (the instant a call is counted
at, as budgets count it), and must be timezone-aware, from 1970 to before 9999 (in UTC:
``0001-01-01T00:00+14:00`` has no UTC date and is refused, not overflowed). Time zones
must be known to both tzdata and DuckDB. A range reads only the ``date``
partitions that can hold it. Money columns are ``DECIMAL(38, 12)`` sums, exact; ratios
(shares, unit costs) are ``DOUBLE``. Invalid arguments raise ``QueryError``.

The budget questions (``budget_burn``, ``budget_status``) are written in
``analytics.budget_queries`` and exported here with the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from analytics import query_parts as parts
from analytics.budget_queries import budget_burn, budget_status
from analytics.query_parts import listed, order
from analytics.query_terms import (
    Dimension,
    Filters,
    Granularity,
    Measure,
    Query,
    QueryError,
)
from analytics.time_buckets import bucket_plan, time_zone
from tollgate.contract import AlertKind

__all__ = [
    "Dimension",
    "Filters",
    "Granularity",
    "Measure",
    "Query",
    "QueryError",
    "budget_burn",
    "budget_status",
    "cache_savings",
    "errors",
    "recent_alerts",
    "spend",
    "top_spenders",
    "unit_costs",
]

_ZERO_USD = "CAST(0 AS DECIMAL(38, 12))"


def spend(
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = (),
    granularity: Granularity | str | None = None,
    tz: str = "UTC",
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Spend and tokens per group (and per time bucket, if ``granularity`` is given).

    Columns: ``bucket`` (local start of the bucket in ``tz``, naive, when granularity is
    set), one column per ``group_by`` dimension, then ``requests``, ``input_tokens``,
    ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``,
    ``reasoning_tokens``, ``total_tokens`` (input + output), ``cost_usd``.
    Ordered by bucket, then the groups. Without groups or granularity it is one row of
    totals (zeros when nothing matched). Buckets with no calls are absent. In the hour a
    clock falls back, two UTC hours share one local ``bucket``.
    """
    dims = parts.dimensions(group_by)
    grain = parts.granularity(granularity)
    zone = time_zone(tz)
    first, last = parts.time_range(start, end, grain)
    where = _where(first, last, filters, tenant_scope)
    groups = [parts.column(d) for d in dims]
    if grain is None:
        sums = ", ".join(f"CAST(coalesce(sum({c}), 0) AS BIGINT) AS {c}" for c in parts.TOKEN_SUMS)
        sql = (
            f"SELECT {listed(groups)}count(*) AS requests, {sums}, {parts.TOTAL_TOKENS}, "
            f"coalesce(sum(cost_usd), {_ZERO_USD}) AS cost_usd "
            f"FROM priced_usage {where.sql()} {_group(groups)} {order(groups)}"
        )
        return Query(sql, tuple(where.params), tuple(d.value for d in dims))
    plan = bucket_plan(zone, first, last, grain)
    per_slot = ", ".join(f"sum({c}) AS {c}" for c in parts.TOKEN_SUMS)
    per_bucket = ", ".join(f"CAST(sum({c}) AS BIGINT) AS {c}" for c in parts.TOKEN_SUMS)
    keys = ["bucket", *groups]
    sql = (
        f"WITH slots AS (SELECT {plan.slot_sql} AS _slot, {listed(groups)}count(*) AS requests, "
        f"{per_slot}, sum(cost_usd) AS cost_usd FROM priced_usage {where.sql()} GROUP BY ALL) "
        f"SELECT {plan.bucket_sql} AS bucket, {listed(groups)}"
        f"CAST(sum(requests) AS BIGINT) AS requests, {per_bucket}, {parts.TOTAL_TOKENS}, "
        f"sum(cost_usd) AS cost_usd "
        f"FROM slots GROUP BY ALL {order(keys)}"
    )
    params = (*plan.slot_params, *where.params, *plan.bucket_params)
    return Query(sql, params, ("bucket", *(d.value for d in dims)))


def top_spenders(
    start: datetime,
    end: datetime,
    *,
    by: Dimension | str,
    n: int = 10,
    measure: Measure | str = Measure.COST,
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """The ``n`` largest values of ``by`` ranked by ``measure`` (ties broken by name).

    Columns: ``rank``, ``<by>``, ``requests``, ``total_tokens``, ``cost_usd``, ``share``
    (of the whole range's cost, 0..1; null when it cost nothing). Rows without a value
    for ``by`` (say, calls without a team) rank together as one null spender.
    """
    key = parts.column(parts.dimension(by))
    count = parts.count(n, "n", 1, 1000)
    ranked_by = _measure(measure)
    first, last = parts.time_range(start, end)
    where = _where(first, last, filters, tenant_scope)
    sql = (
        f"WITH grouped AS (SELECT {key}, count(*) AS requests, "
        f"{parts.TOTAL_TOKENS}, sum(cost_usd) AS cost_usd "
        f"FROM priced_usage {where.sql()} GROUP BY {key}), "
        f"ranked AS (SELECT CAST(row_number() OVER "
        f"(ORDER BY {ranked_by.value} DESC, {key} ASC NULLS LAST) AS BIGINT) AS rank, "
        f"{key}, requests, total_tokens, cost_usd, CAST(cost_usd AS DOUBLE) / "
        f"nullif(CAST(sum(cost_usd) OVER () AS DOUBLE), 0) AS share FROM grouped) "
        f"SELECT * FROM ranked WHERE rank <= ? {order(['rank'])}"
    )
    return Query(sql, (*where.params, count), ("rank",))


def unit_costs(
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = (),
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Cost per request and per 1k tokens.

    Columns: groups, ``requests``, ``total_tokens``, ``cost_usd``, ``cost_per_request``,
    ``cost_per_1k_tokens`` (null where the denominator is 0).
    """
    dims = parts.dimensions(group_by)
    first, last = parts.time_range(start, end)
    where = _where(first, last, filters, tenant_scope)
    groups = [parts.column(d) for d in dims]
    sql = (
        f"SELECT {listed(groups)}count(*) AS requests, "
        f"{parts.TOTAL_TOKENS}, "
        f"coalesce(sum(cost_usd), {_ZERO_USD}) AS cost_usd, "
        f"CAST(sum(cost_usd) AS DOUBLE) / nullif(count(*), 0) AS cost_per_request, "
        f"CAST(sum(cost_usd) AS DOUBLE) * 1000 / nullif(sum(input_tokens) + sum(output_tokens), 0) "
        f"AS cost_per_1k_tokens "
        f"FROM priced_usage {where.sql()} {_group(groups)} {order(groups)}"
    )
    return Query(sql, tuple(where.params), tuple(d.value for d in dims))


def cache_savings(
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = (),
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """What prompt caching saved, gross and net of what writing the cache cost extra.

    Each row is priced by the price that priced it (``price_version``, looked up in the
    ``prices`` view), at its uncached input rate:

    - ``savings_usd`` (gross): cached-read tokens at the uncached input rate, minus what
      they cost at the cache-read rate (``uncached_cost_usd - cache_read_cost_usd``).
    - ``cache_write_premium_usd``: what writing the cache cost beyond sending those tokens
      uncached: ``cache_creation_cost_usd`` minus the cache-creation tokens at the uncached
      input rate (negative where a provider charges less for a cache write).
    - ``net_savings_usd``: ``savings_usd - cache_write_premium_usd``, what caching saved
      all told (negative when the writes cost more than the reads saved).

    Columns: groups, ``input_tokens``, ``cache_read_input_tokens``, ``cache_hit_ratio``,
    ``cache_read_cost_usd``, ``uncached_cost_usd``, ``savings_usd``,
    ``cache_write_premium_usd``, ``net_savings_usd``.
    Rows priced by a version the ``Lake``'s catalog does not hold count as saving
    nothing and costing no premium: their uncached cost is taken to be what they cost.
    """
    dims = parts.dimensions(group_by)
    first, last = parts.time_range(start, end)
    where = _where(first, last, filters, tenant_scope)
    groups = [parts.column(d) for d in dims]

    def total(expression: str) -> str:
        return f"coalesce(sum({expression}), {_ZERO_USD})"

    uncached = total("coalesce(u.cache_read_input_tokens * p.input_usd, u.cache_read_cost_usd)")
    read_cost = total("u.cache_read_cost_usd")
    write_cost = total("u.cache_creation_cost_usd")
    write_uncached = total(
        "coalesce(u.cache_creation_input_tokens * p.input_usd, u.cache_creation_cost_usd)"
    )
    premium = f"({write_cost} - {write_uncached})"
    sql = (
        f"WITH used AS (SELECT {listed(groups)}price_version, "
        f"CAST(sum(input_tokens) AS BIGINT) AS input_tokens, "
        f"CAST(sum(cache_read_input_tokens) AS BIGINT) AS cache_read_input_tokens, "
        f"sum(cache_read_cost_usd) AS cache_read_cost_usd, "
        f"CAST(sum(cache_creation_input_tokens) AS BIGINT) AS cache_creation_input_tokens, "
        f"sum(cache_creation_cost_usd) AS cache_creation_cost_usd "
        f"FROM priced_usage {where.sql()} GROUP BY ALL) "
        f"SELECT {listed(parts.column(d, 'u.') for d in dims)}"
        f"CAST(coalesce(sum(u.input_tokens), 0) AS BIGINT) AS input_tokens, "
        f"CAST(coalesce(sum(u.cache_read_input_tokens), 0) AS BIGINT) AS cache_read_input_tokens, "
        f"CAST(sum(u.cache_read_input_tokens) AS DOUBLE) / nullif(sum(u.input_tokens), 0) "
        f"AS cache_hit_ratio, {read_cost} AS cache_read_cost_usd, "
        f"{uncached} AS uncached_cost_usd, {uncached} - {read_cost} AS savings_usd, "
        f"{premium} AS cache_write_premium_usd, "
        f"{uncached} - {read_cost} - {premium} AS net_savings_usd "
        f"FROM used u LEFT JOIN prices p ON p.price_version = u.price_version "
        f"{_group([parts.column(d, 'u.') for d in dims])} {order(groups)}"
    )
    return Query(sql, tuple(where.params), tuple(d.value for d in dims))


def errors(
    start: datetime,
    end: datetime,
    *,
    group_by: Sequence[Dimension | str] = (),
    filters: Filters | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Calls that did not end ``ok``, and what they cost, per status and group.

    Columns: ``status``, groups, ``requests``, ``total_tokens``, ``cost_usd``,
    ``share_of_requests`` (of all calls in the range and scope, 0..1).
    """
    dims = parts.dimensions(group_by)
    if Dimension.STATUS in dims:
        raise QueryError("errors are always grouped by status; leave it out of group_by")
    first, last = parts.time_range(start, end)
    where = _where(first, last, filters, tenant_scope)
    keys = [parts.column(Dimension.STATUS), *(parts.column(d) for d in dims)]
    sql = (
        f"WITH counted AS (SELECT {listed(keys)}count(*) AS requests, "
        f"{parts.TOTAL_TOKENS}, sum(cost_usd) AS cost_usd, "
        f"CAST(count(*) AS DOUBLE) / CAST(sum(count(*)) OVER () AS DOUBLE) AS share_of_requests "
        f"FROM priced_usage {where.sql()} GROUP BY ALL) "
        f"SELECT * FROM counted WHERE \"status\" <> 'ok' {order(keys)}"
    )
    return Query(sql, tuple(where.params), ("status", *(d.value for d in dims)))


_ALERT_COLUMNS = (
    "alert_id",
    "kind",
    "severity",
    "time",
    "subject",
    "scope",
    "tenant",
    "summary",
    "budget_id",
    "threshold_pct",
    "spent_usd",
    "limit_usd",
    "expected_usd",
    "actual_usd",
    "impact_usd",
    "score",
    "since",
)


def recent_alerts(
    start: datetime,
    end: datetime,
    *,
    kinds: Sequence[str] = (),
    tenant_scope: str | None = None,
) -> Query:
    """Alerts raised in the range, newest first (from the ``alerts`` view).

    Columns: every ``ALERTS_SCHEMA`` field but the lineage columns. ``kinds`` keeps only
    those kinds (``budget_threshold``, ``cost_anomaly``, ``new_spender``).
    """
    first, last = parts.time_range(start, end)
    where = parts.Where().ended_in(first, last, column="time")
    wanted = _alert_kinds(kinds)
    if wanted:
        where.add(f"kind IN ({', '.join('?' * len(wanted))})", *wanted)
    where.scoped(tenant_scope)
    sql = (
        f"SELECT {listed(_ALERT_COLUMNS, trailing=False)} FROM alerts {where.sql()} "
        f"ORDER BY time DESC, alert_id ASC"
    )
    return Query(sql, tuple(where.params), ("time", "alert_id"))


def _where(
    start: datetime, end: datetime, filters: Filters | None, tenant_scope: str | None
) -> parts.Where:
    return (
        parts.Where()
        .ended_in(start, end)
        .matching(parts.filter_values(filters))
        .scoped(tenant_scope)
    )


def _group(groups: Sequence[str]) -> str:
    return f"GROUP BY {', '.join(groups)}" if groups else ""


def _measure(value: object) -> Measure:
    if isinstance(value, Measure):
        return value
    try:
        return Measure(value)
    except ValueError:
        allowed = ", ".join(m.value for m in Measure)
        raise QueryError(f"unknown measure {value!r}; use one of: {allowed}") from None


def _alert_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    known = {kind.value for kind in AlertKind}
    checked = []
    for kind in kinds:
        if not isinstance(kind, str) or kind not in known:
            raise QueryError(f"unknown alert kind {kind!r}; use one of: {', '.join(sorted(known))}")
        checked.append(str(kind))
    return tuple(dict.fromkeys(checked))
