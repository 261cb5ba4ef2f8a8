"""Budget questions: where each budget stands, and how one burns down over its window.

Exported from ``analytics.queries``; see there for the conventions every query follows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from analytics import query_parts as parts
from analytics.query_terms import Granularity, Query, QueryError
from tollgate.contract import BudgetStatus
from tollgate.contract import Dimension as BudgetDimension

BURN_LOOKBACK = timedelta(days=366)
"""How far before ``at`` a burn-down reads spend: the longest window it can draw."""
STATE_LOOKBACK = timedelta(days=400)
"""How far before ``at`` the budget questions look for a state whose window contains
``at``. A state is published inside its window (at or after ``window_start``), so this
finds every calendar window (a month at most) and every rolling window up to 400 days;
a longer rolling window is not seen. It lets a query open only the ``date`` partitions
of ``budget_state`` since then, not the whole history."""
_STEP = {
    Granularity.HOUR: "INTERVAL 1 HOUR",
    Granularity.DAY: "INTERVAL 1 DAY",
    Granularity.WEEK: "INTERVAL 7 DAY",
    Granularity.MONTH: "INTERVAL 1 MONTH",
}


def budget_burn(
    budget_id: str,
    subject: str | None = None,
    *,
    at: datetime,
    granularity: Granularity | str = Granularity.HOUR,
    tenant_scope: str | None = None,
) -> Query:
    """Burn-down of one budget's window that contains ``at``, and its forecast to the end.

    Window and limit come from the latest published state of the budget whose window
    contains ``at`` (the ``budget_state`` view, published since ``at - STATE_LOOKBACK``);
    spend from the priced rows in the budget's scope.
    Columns: ``bucket`` (UTC), ``kind`` (``actual`` or ``forecast``), ``spent_usd``,
    ``spent_tokens`` (cumulative since the window start), ``limit_usd``, ``limit_tokens``.
    The forecast extends the window's average rate so far to the window end.

    ``bucket`` is the naive UTC start of each bucket, from the one holding the window start
    to the one holding the window end. ``actual`` rows run to the bucket holding ``at``
    (spend ending before ``at``; buckets without calls carry the total on); ``forecast``
    rows start at that same bucket (its value at the bucket's end) and run to the last.
    No state whose window contains ``at`` means no rows. Without ``subject``, a budget with
    more than one subject is an error (``QueryError`` from ``Lake``): name one.
    Spend counts input plus output tokens, as budgets do, from at most a year before ``at``.
    """
    budget = parts.name(budget_id, "budget_id")
    grain = parts.granularity(granularity, optional=False)
    moment = parts.instant(at, "at")
    unit, step = grain.value, _STEP[grain]
    candidates = parts.Where().add("budget_id = ?", budget)
    candidates.add("date >= ?", (moment - STATE_LOOKBACK).date())
    if subject is not None:
        candidates.add("subject = ?", parts.name(subject, "subject"))
    candidates.scoped(tenant_scope)
    params: list[object] = [*candidates.params]
    sql = f"WITH candidates AS (SELECT * FROM budget_state {candidates.sql()}), "
    if subject is None:
        message = f"{parts.QUERY_ERROR}budget {budget!r} has several subjects; name one"
        sql += (
            "guard AS (SELECT CASE WHEN count(DISTINCT subject) > 1 THEN error(?) "
            "ELSE true END AS ok FROM candidates), "
        )
        params.append(message)
    else:
        sql += "guard AS (SELECT true AS ok), "
    sql += (
        "state AS (SELECT c.subject, c.scope, c.window_start, c.window_end, c.limit_usd, "
        "c.limit_tokens FROM candidates c, guard g "
        "WHERE g.ok AND c.window_start <= ? AND ? < c.window_end "
        "QUALIFY row_number() OVER (ORDER BY c.as_of_time DESC, c.subject) = 1), "
    )
    params += [moment, moment]
    spend = parts.Where(alias="p.").add("p.end_time >= s.window_start AND p.end_time < ?", moment)
    low, high = parts.partition_span(moment - BURN_LOOKBACK, moment + timedelta(microseconds=1))
    spend.add("p.date >= ? AND p.date <= ?", low, high)
    for dimension in BudgetDimension:
        value, key = f"s.scope[{parts.sql_text(dimension.value)}]", f'p."{dimension.value}"'
        spend.add(f"({value} IS NULL OR {key} = {value} OR ({value} = '*' AND {key} IS NOT NULL))")
    spend.scoped(tenant_scope)
    sql += (
        f"spend AS (SELECT date_trunc('{unit}', make_timestamp(epoch_us(p.end_time))) AS bucket, "
        f"sum(p.input_tokens + p.output_tokens) AS tokens, sum(p.cost_usd) AS usd "
        f"FROM priced_usage p, state s {spend.sql()} GROUP BY 1), "
        f"buckets AS (SELECT unnest(generate_series("
        f"date_trunc('{unit}', timezone('UTC', s.window_start)), "
        f"timezone('UTC', s.window_end) - INTERVAL 1 MICROSECOND, {step})) AS bucket "
        f"FROM state s), "
        f"actual AS (SELECT b.bucket, 'actual' AS kind, "
        f"sum(coalesce(sp.usd, CAST(0 AS DECIMAL(38, 12)))) OVER "
        f"(ORDER BY b.bucket ROWS UNBOUNDED PRECEDING) AS spent_usd, "
        f"CAST(sum(coalesce(sp.tokens, 0)) OVER "
        f"(ORDER BY b.bucket ROWS UNBOUNDED PRECEDING) AS BIGINT) AS spent_tokens "
        f"FROM buckets b LEFT JOIN spend sp ON sp.bucket = b.bucket "
        f"WHERE b.bucket <= date_trunc('{unit}', timezone('UTC', ?))), "
    )
    params += [*spend.params, moment]
    sql += (
        "totals AS (SELECT coalesce(sum(usd), 0) AS usd, coalesce(sum(tokens), 0) AS tokens "
        "FROM spend), "
        "pace AS (SELECT epoch_us(s.window_start) AS since_us, epoch_us(s.window_end) AS until_us, "
        "epoch_us(CAST(? AS TIMESTAMPTZ)) - epoch_us(s.window_start) AS elapsed_us FROM state s), "
        f"forecast AS (SELECT b.bucket, 'forecast' AS kind, "
        f"CAST(CAST(t.usd AS DOUBLE) * r.ratio AS DECIMAL(38, 12)) AS spent_usd, "
        f"CAST(round(CAST(t.tokens AS DOUBLE) * r.ratio) AS BIGINT) AS spent_tokens "
        f"FROM buckets b, totals t, pace p, LATERAL (SELECT "
        f"(least(epoch_us(b.bucket + {step}), p.until_us) - p.since_us) / p.elapsed_us AS ratio) r "
        f"WHERE p.elapsed_us > 0 AND b.bucket >= date_trunc('{unit}', timezone('UTC', ?))) "
        "SELECT x.bucket, x.kind, x.spent_usd, x.spent_tokens, s.limit_usd, s.limit_tokens "
        "FROM (SELECT * FROM actual UNION ALL SELECT * FROM forecast) x, state s "
        "ORDER BY x.bucket ASC, x.kind ASC"
    )
    params += [moment, moment]
    return Query(sql, tuple(params), ("bucket", "kind"))


def budget_status(
    *,
    at: datetime | None = None,
    budget_id: str | None = None,
    status: str | None = None,
    tenant_scope: str | None = None,
) -> Query:
    """Where every budget subject stands at ``at`` (default: now), from the ``budget_state``
    view: per subject, the latest state among those whose window contains ``at``
    (``window_start <= at < window_end``). A subject whose windows have all ended (or not
    begun) by ``at`` is absent; for an ``at`` in the past, its window's last state is shown.

    Columns: ``budget_id``, ``subject``, ``tenant``, ``action``, ``status``,
    ``spent_tokens``, ``limit_tokens``, ``spent_usd``, ``limit_usd``, ``used_pct``
    (largest of tokens/USD), ``window_start``, ``window_end``, ``reset_at``, ``as_of_time``.
    ``status`` keeps the subjects whose state at ``at`` has it (ok, warning, exceeded).
    Only states published since ``at - STATE_LOOKBACK`` are read.
    """
    moment = parts.instant(datetime.now(UTC) if at is None else at, "at")
    where = parts.Where().add("window_start <= ? AND ? < window_end", moment, moment)
    where.add("date >= ?", (moment - STATE_LOOKBACK).date())
    if budget_id is not None:
        where.add("budget_id = ?", parts.name(budget_id, "budget_id"))
    where.scoped(tenant_scope)
    latest = parts.Where()
    if status is not None:
        known = [s.value for s in BudgetStatus]
        if status not in known:
            raise QueryError(f"unknown budget status {status!r}; use one of: {', '.join(known)}")
        latest.add("status = ?", str(status))
    sql = (
        "WITH latest AS (SELECT budget_id, subject, tenant, action, status, spent_tokens, "
        "limit_tokens, spent_usd, limit_usd, greatest("
        "CAST(spent_tokens AS DOUBLE) / nullif(limit_tokens, 0), "
        "CAST(spent_usd AS DOUBLE) / nullif(CAST(limit_usd AS DOUBLE), 0)) * 100 AS used_pct, "
        f"window_start, window_end, reset_at, as_of_time FROM budget_state {where.sql()} "
        "QUALIFY row_number() OVER (PARTITION BY budget_id, subject ORDER BY as_of_time DESC, "
        "window_end DESC, spent_tokens DESC, spent_usd DESC, status ASC) = 1) "
        f"SELECT * FROM latest {latest.sql()} {parts.order(['budget_id', 'subject'])}"
    )
    return Query(sql, (*where.params, *latest.params), ("budget_id", "subject"))
