"""Budget states and alerts that agree with a synthetic lake's events.

While the events are generated, ``Tracker`` adds up the spend of a slice of the traffic
(a budget's subject, an incident's key) per quarter hour. From those sums come the budget
states the stream would have published (one per hour with new spend, per window), the
threshold alerts where a budget crossed 50/80/100 %, and the cost-anomaly and new-spender
alerts of the incidents: so the dashboard shows the incidents where the data has them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np

from analytics.seed_events import Chunk, usd
from tollgate.contract import (
    Alert,
    AlertKind,
    BudgetAction,
    BudgetState,
    BudgetStatus,
    CalendarUnit,
    Dimension,
    Severity,
    subject_key,
)
from tollgate.ids import uuid7_for

QUARTER_US = 900_000_000
HOUR_US = 4 * QUARTER_US
THRESHOLDS_PCT = (50, 80, 100)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Tracker:
    """Tokens and picodollars of the calls ``select`` picks, per quarter hour of the lake."""

    def __init__(self, start_us: int, end_us: int, select: Callable[[Chunk], np.ndarray]) -> None:
        self.start_us = start_us
        self.end_us = end_us
        self._select = select
        bins = -(-(end_us - start_us) // QUARTER_US)
        self.tokens = np.zeros(bins, dtype=np.int64)
        self.picos = np.zeros(bins, dtype=np.int64)
        self._running: tuple[list[int], list[int]] | None = None

    def add(self, chunk: Chunk) -> None:
        self._running = None
        picked = self._select(chunk)
        where = (chunk.end_us[picked] - self.start_us) // QUARTER_US
        np.add.at(self.tokens, where, chunk.tokens[picked])
        np.add.at(self.picos, where, chunk.cost_pico[picked])

    def between(self, start_us: int, end_us: int) -> tuple[int, int]:
        """Tokens and picodollars of calls ending in ``[start_us, end_us)`` (quarter-aligned)."""
        if self._running is None:
            # Python ints: a long lake's running total of picodollars can pass int64.
            tokens = [0, *np.cumsum(self.tokens).tolist()]
            picos = [0, *np.cumsum(self.picos.astype(object)).tolist()]
            self._running = (tokens, picos)
        tokens, picos = self._running
        bins = len(self.tokens)
        first = min(max((start_us - self.start_us) // QUARTER_US, 0), bins)
        last = min(max(-(-(end_us - self.start_us) // QUARTER_US), 0), bins)
        if last <= first:
            return 0, 0
        return tokens[last] - tokens[first], int(picos[last] - picos[first])


@dataclass(frozen=True, slots=True)
class BudgetPlan:
    """A budget to show, and how full its busiest window should look."""

    budget_id: str
    scope: dict[Dimension, str]
    unit: CalendarUnit
    action: BudgetAction
    in_tokens: bool
    """Limit tokens (else USD)."""
    peak_use: float
    """Spend of the busiest window over the limit: 0.72 ends in a warning, above 1 exceeds.
    0 puts the limit between the two busiest windows, so exactly one is exceeded."""
    tracker: Tracker


@dataclass(frozen=True, slots=True)
class History:
    states: list[BudgetState]
    alerts: list[Alert]


def budget_history(plans: list[BudgetPlan]) -> History:
    """Every plan's states, hour by hour, and its threshold alerts."""
    states: list[BudgetState] = []
    alerts: list[Alert] = []
    for plan in plans:
        windows = _windows(plan.unit, plan.tracker.start_us, plan.tracker.end_us)
        totals = [_measure(plan, plan.tracker.between(ws, we)) for ws, we in windows]
        limit = _limit(plan, totals)
        for window_start, window_end in windows:
            _window_history(plan, limit, window_start, window_end, states, alerts)
    return History(states, alerts)


def spike_alert(tracker: Tracker, scope: dict[Dimension, str], hour_start_us: int) -> Alert | None:
    """The cost anomaly of one key's expensive hour, against its previous 24 hours."""
    hour_end_us = min(hour_start_us + HOUR_US, tracker.end_us)
    _, actual = tracker.between(hour_start_us, hour_end_us)
    before = [
        tracker.between(start, start + HOUR_US)[1]
        for start in range(hour_start_us - 24 * HOUR_US, hour_start_us, HOUR_US)
        if start >= tracker.start_us
    ]
    if not actual:
        return None
    expected = sum(before) // len(before) if before else 0
    spread = float(np.std(before)) if before else 0.0
    score = min((actual - expected) / max(spread, 0.05 * expected, 1.0), 99.0)
    who = f"{scope[Dimension.TENANT]} key {scope[Dimension.API_KEY]}"
    return Alert(
        alert_id=uuid7_for(hour_end_us // 1000, f"seed|anomaly|{who}|{hour_end_us}".encode()),
        kind=AlertKind.COST_ANOMALY,
        severity=Severity.CRITICAL,
        time=_instant(hour_end_us),
        subject=subject_key(scope),
        scope=scope,
        summary=(
            f"{who} spend is {_money(usd(actual))} in 1 h, "
            f"expected {_money(usd(expected))} (z={score:.1f})"
        ),
        expected_usd=usd(expected),
        actual_usd=usd(actual),
        impact_usd=usd(max(actual - expected, 0)),
        score=round(score, 3),
        since=_instant(hour_start_us),
    )


def new_spender_alert(
    tracker: Tracker, scope: dict[Dimension, str], first_seen_us: int
) -> Alert | None:
    """A key never seen before, and what it spent in its first half hour."""
    at_us = min(first_seen_us + 2 * QUARTER_US, tracker.end_us)
    _, spent = tracker.between(first_seen_us, at_us)
    if not spent:
        return None
    key, tenant = scope[Dimension.API_KEY], scope[Dimension.TENANT]
    return Alert(
        alert_id=uuid7_for(at_us // 1000, f"seed|new|{key}|{at_us}".encode()),
        kind=AlertKind.NEW_SPENDER,
        severity=Severity.CRITICAL,
        time=_instant(at_us),
        subject=subject_key(scope),
        scope=scope,
        summary=f"new key {key} of {tenant} spent {_money(usd(spent))} in its first 30 min",
        expected_usd=Decimal(0),
        actual_usd=usd(spent),
        impact_usd=usd(spent),
        since=_instant(first_seen_us),
    )


def _window_history(
    plan: BudgetPlan,
    limit: Decimal,
    window_start: int,
    window_end: int,
    states: list[BudgetState],
    alerts: list[Alert],
) -> None:
    tracker = plan.tracker
    subject = subject_key(plan.scope)
    first = max(window_start, tracker.start_us)
    last = min(window_end, tracker.end_us)
    published_tokens = 0
    crossed: list[int] = []
    quarter = first
    while quarter < last:
        as_of = min(quarter + QUARTER_US, last)
        tokens, picos = tracker.between(window_start, as_of)
        pct = _measure(plan, (tokens, picos)) / limit * 100
        for threshold in THRESHOLDS_PCT:
            if pct >= threshold and threshold not in crossed:
                crossed.append(threshold)
                alerts.append(
                    _threshold_alert(plan, limit, threshold, window_start, as_of, tokens, picos)
                )
        hour_done = (as_of - tracker.start_us) % HOUR_US == 0 or as_of == last
        if hour_done and tokens != published_tokens:
            published_tokens = tokens
            top = max(crossed, default=None)
            status = (
                BudgetStatus.EXCEEDED
                if top == 100
                else BudgetStatus.WARNING
                if top is not None
                else BudgetStatus.OK
            )
            states.append(
                BudgetState(
                    budget_id=plan.budget_id,
                    subject=subject,
                    scope=plan.scope,
                    action=plan.action,
                    status=status,
                    spent_tokens=tokens,
                    spent_usd=usd(picos),
                    limit_tokens=int(limit) if plan.in_tokens else None,
                    limit_usd=None if plan.in_tokens else limit,
                    window_start=_instant(window_start),
                    window_end=_instant(window_end),
                    reset_at=_instant(window_end) if status is BudgetStatus.EXCEEDED else None,
                    threshold_pct=top,
                    as_of_time=_instant(as_of),
                )
            )
        quarter += QUARTER_US


def _threshold_alert(
    plan: BudgetPlan,
    limit: Decimal,
    pct: int,
    window_start: int,
    at: int,
    tokens: int,
    picos: int,
) -> Alert:
    subject = subject_key(plan.scope)
    spent = (
        f"{tokens:,} of {int(limit):,} tokens"
        if plan.in_tokens
        else f"{_money(usd(picos))} of {_money(limit)}"
    )
    verb = "blocks calls" if plan.action is BudgetAction.BLOCK and pct >= 100 else "alerts"
    window_ms = window_start // 1000
    return Alert(
        alert_id=uuid7_for(window_ms, f"{plan.budget_id}|{subject}|{window_ms}|{pct}".encode()),
        kind=AlertKind.BUDGET_THRESHOLD,
        severity=Severity.CRITICAL
        if pct >= 100
        else Severity.WARNING
        if pct >= 80
        else Severity.INFO,
        time=_instant(at),
        subject=subject,
        scope=plan.scope,
        summary=(
            f"budget {plan.budget_id!r} for {subject} reached {pct}% ({spent}); the budget {verb}"
        ),
        budget_id=plan.budget_id,
        threshold_pct=pct,
        spent_usd=usd(picos),
        limit_usd=None if plan.in_tokens else limit,
        since=_instant(window_start),
    )


def _limit(plan: BudgetPlan, totals: list[Decimal]) -> Decimal:
    ranked = sorted(totals, reverse=True)
    peak = ranked[0] if ranked else Decimal(0)
    if plan.peak_use > 0:
        limit = peak / Decimal(str(plan.peak_use))
    elif len(ranked) > 1 and ranked[1] < peak * Decimal("0.9"):
        limit = (peak + ranked[1]) / 2
    else:
        limit = peak / Decimal("1.1")
    limit = _tidy(limit) if limit > 0 else Decimal(0)
    floor = Decimal(1000) if plan.in_tokens else Decimal(1)
    return max(limit, floor)


def _measure(plan: BudgetPlan, spend: tuple[int, int]) -> Decimal:
    tokens, picos = spend
    return Decimal(tokens) if plan.in_tokens else usd(picos)


def _windows(unit: CalendarUnit, start_us: int, end_us: int) -> list[tuple[int, int]]:
    """The UTC calendar windows that meet ``[start_us, end_us)``."""
    windows = []
    at = _period_start(unit, _instant(start_us))
    while _micros(at) < end_us:
        following = _next_period(unit, at)
        windows.append((_micros(at), _micros(following)))
        at = following
    return windows


def _period_start(unit: CalendarUnit, at: datetime) -> datetime:
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit is CalendarUnit.DAY:
        return day
    if unit is CalendarUnit.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next_period(unit: CalendarUnit, start: datetime) -> datetime:
    if unit is CalendarUnit.DAY:
        return start + timedelta(days=1)
    if unit is CalendarUnit.WEEK:
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def _tidy(amount: Decimal) -> Decimal:
    """Three significant digits, as a person would set a limit (moves it by under 1 %)."""
    exponent = amount.adjusted() - 2
    tidy = amount.scaleb(-exponent).quantize(Decimal(1), ROUND_HALF_EVEN).scaleb(exponent)
    return tidy.quantize(Decimal(1)) if tidy.as_tuple().exponent > 0 else tidy


def _money(amount: Decimal) -> str:
    return f"${amount:,.2f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.4f}"


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)
