"""The budget stage: one state per budget and subject, and each usage counted once.

A first stage reads usage partition ``p`` in offset order, prices each event and sends a
``Contribution`` for every budget subject the event falls under (``contributions_for``).
This stage keeps one ``SubjectState`` per state key and folds contributions into it with
``apply``. After a crash the first stage re-sends contributions from its last committed
offset, in the same order; the state keeps, per source partition, the next offset it has
not counted (its *watermark*), so a contribution is applied only if its offset is at or
past the watermark. Counting is exactly-once in effect over at-least-once delivery, and
the watermarks are published as ``BudgetState.as_of_offsets``.

Everything is a pure function of its arguments and ``now``: no clock is read, so a replay
with the same inputs gives the same states. Money is ``Decimal`` throughout. What drives
this (``stream.budget_batches`` groups contributions by key, ``stream.budget_stage`` stores
states in a changelog table and publishes ``to_budget_state`` and alerts) lives
elsewhere; nothing here does I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import msgspec

from stream.budget_definitions import BudgetIndex
from stream.budget_windows import (
    ROLLING_ALERT_WINDOW,
    SlidingView,
    WindowView,
    utc,
    window_view,
)
from tollgate.contract import (
    BudgetAction,
    BudgetDefinition,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    Dimension,
    PricedEvent,
)

ZERO_USD = Decimal(0)


class Contribution(msgspec.Struct, frozen=True, kw_only=True):
    """One priced event's spend toward one budget subject, and where in the log it was."""

    state_key: str
    budget_id: str
    subject: str
    scope: dict[Dimension, str]
    event_id: uuid.UUID
    event_time: datetime
    """The usage event's ``end_time`` (UTC): the window the spend belongs to."""
    tokens: int
    """Input plus output tokens."""
    usd: Decimal
    source_partition: int
    source_offset: int


class Spend(msgspec.Struct, frozen=True, array_like=True):
    """Tokens and dollars counted in one bucket."""

    tokens: int = 0
    usd: Decimal = ZERO_USD


_NOTHING = Spend()


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """What the last published ``BudgetState`` said, to tell when a new one is due."""

    status: BudgetStatus
    spent_tokens: int
    spent_usd: Decimal
    threshold_pct: int | None
    reset_at: datetime | None
    period_start: datetime | None
    """The calendar period it was for; None for a sliding window."""
    as_of_time: datetime | None
    limit_tokens: int | None
    limit_usd: Decimal | None
    action: BudgetAction


class SubjectState(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the stage keeps for one budget and subject; a changelog table value.

    Bounded: a sliding window keeps at most ~62 buckets, a calendar window at most two
    (the current period and the previous one during its grace). ``encode_state`` and
    ``decode_state`` serialize it.
    """

    budget_id: str
    subject: str
    scope: dict[Dimension, str]
    window: BudgetWindow
    """The window the buckets were kept for; a definition with another one starts afresh."""
    buckets: dict[int, Spend] = {}
    """Sliding: bucket index → spend. Calendar: period start (Unix seconds) → spend."""
    watermarks: dict[int, int] = {}
    """Per source partition, the next offset not yet counted."""
    alerted: dict[int, list[int]] = {}
    """Thresholds already alerted, per alert window: a calendar period's start, or 0 for a
    sliding window (where a threshold re-arms once spend falls back below it)."""
    as_of_time: datetime | None = None
    """The latest event time counted (or dropped as late)."""
    dropped_late: int = 0
    """Contributions ever dropped because their window had closed."""
    published: Published | None = None


class ThresholdCrossing(msgspec.Struct, frozen=True, kw_only=True):
    """A threshold newly reached in a window: said once per window."""

    threshold_pct: int
    window_start: datetime
    window_end: datetime
    spent_tokens: int
    spent_usd: Decimal


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``apply`` did."""

    changed: bool
    """The ``BudgetState`` to publish differs from the last one: publish it."""
    applied: int = 0
    """Contributions counted."""
    dropped_late: int = 0
    """Contributions for a window already closed: offsets advance, spend does not."""
    skipped_duplicates: int = 0
    """Contributions below their partition's watermark: counted before."""
    crossings: list[ThresholdCrossing] = []
    """Thresholds newly crossed, lowest first; one batch can cross several."""


def budget_tokens(event: PricedEvent) -> int | None:
    """The tokens ``event`` counts toward budgets, or None when it spent nothing at all."""
    tokens = event.input_tokens + event.output_tokens
    return tokens if tokens or event.cost_usd else None


def contributions_for(
    event: PricedEvent, index: BudgetIndex, *, partition: int, offset: int
) -> list[Contribution]:
    """The contributions of a priced event at ``offset`` of usage ``partition``.

    An event that used nothing contributes nothing.
    """
    tokens = budget_tokens(event)
    if tokens is None:
        return []
    return [
        Contribution(
            state_key=match.state_key,
            budget_id=match.definition.budget_id,
            subject=match.subject,
            scope=match.scope,
            event_id=event.event_id,
            event_time=event.end_time,
            tokens=tokens,
            usd=event.cost_usd,
            source_partition=partition,
            source_offset=offset,
        )
        for match in index.subjects(event)
    ]


def apply(
    state: SubjectState | None,
    definition: BudgetDefinition,
    contributions: Sequence[Contribution],
    now: datetime,
) -> tuple[SubjectState, Outcome]:
    """Count a batch of one state key's contributions, in offset order per partition.

    Returns a new state (``state`` is not modified) and what happened. Re-applying
    contributions already counted changes nothing but, possibly, what time has done
    to the window since.
    """
    if state is None:
        if not contributions:
            raise ValueError("a new subject state needs at least one contribution")
        first = contributions[0]
        state = SubjectState(
            budget_id=first.budget_id,
            subject=first.subject,
            scope=first.scope,
            window=definition.window,
        )
    view = window_view(definition.window, now)
    buckets, totals, alerted = _live(state, definition, view)
    _rearm(alerted, totals, definition)
    watermarks = dict(state.watermarks)
    latest = state.as_of_time
    added_tokens: dict[int, int] = {}
    added_usd: dict[int, Decimal] = {}
    applied = late = duplicates = 0
    bucket_of = view.bucket_of
    for contribution in contributions:
        partition = contribution.source_partition
        offset = contribution.source_offset
        if offset < watermarks.get(partition, 0):
            duplicates += 1
            continue
        watermarks[partition] = offset + 1
        event_time = contribution.event_time
        if latest is None or event_time > latest:
            latest = event_time
        bucket = bucket_of(event_time.timestamp())
        if bucket is None:
            late += 1
            continue
        applied += 1
        added_tokens[bucket] = added_tokens.get(bucket, 0) + contribution.tokens
        added_usd[bucket] = added_usd.get(bucket, ZERO_USD) + contribution.usd
    for bucket, tokens in added_tokens.items():
        usd = added_usd[bucket]
        buckets[bucket] = _plus(buckets.get(bucket, _NOTHING), tokens, usd)
        window = view.alert_window(bucket)
        totals[window] = _plus(totals.get(window, _NOTHING), tokens, usd)
    crossings = _cross(alerted, totals, definition, view) if added_tokens else []
    standing = _standing(buckets, totals, definition, view)
    published = _published(standing, definition, view, latest)
    new_state = msgspec.structs.replace(
        state,
        window=definition.window,
        buckets=buckets,
        watermarks=watermarks,
        alerted=alerted,
        as_of_time=latest,
        dropped_late=state.dropped_late + late,
        published=published,
    )
    return new_state, Outcome(
        changed=published != state.published,
        applied=applied,
        dropped_late=late,
        skipped_duplicates=duplicates,
        crossings=crossings,
    )


def expire(
    state: SubjectState, definition: BudgetDefinition, now: datetime
) -> tuple[SubjectState, bool]:
    """Let time pass: drop spend that left the window, roll calendar periods over.

    Returns the new state and whether its ``BudgetState`` changed (a sliding window
    decayed, an exceeded budget came back under its limit, a period ended, the
    definition's limits changed): then store and publish it. When nothing changed the
    old state may be kept, since every call prunes again.
    """
    view = window_view(definition.window, now)
    buckets, totals, alerted = _live(state, definition, view)
    _rearm(alerted, totals, definition)
    standing = _standing(buckets, totals, definition, view)
    published = _published(standing, definition, view, state.as_of_time)
    new_state = msgspec.structs.replace(
        state, window=definition.window, buckets=buckets, alerted=alerted, published=published
    )
    return new_state, published != state.published


def to_budget_state(
    state: SubjectState, definition: BudgetDefinition, now: datetime
) -> BudgetState:
    """The contract record for ``state`` at ``now``, to publish on the state topic."""
    view = window_view(definition.window, now)
    buckets = view.live(state.buckets) if state.window == definition.window else {}
    standing = _standing(buckets, _totals(buckets, view), definition, view)
    return BudgetState(
        budget_id=state.budget_id,
        subject=state.subject,
        scope=state.scope,
        action=definition.action,
        status=standing.status,
        spent_tokens=standing.spent_tokens,
        spent_usd=standing.spent_usd,
        limit_tokens=definition.limit_tokens,
        limit_usd=definition.limit_usd,
        window_start=standing.window_start,
        window_end=standing.window_end,
        reset_at=standing.reset_at,
        threshold_pct=standing.threshold_pct,
        # Never "now" for a state that counted nothing: the gateway forgets its own
        # finished calls up to as_of_time, and this stage may not have seen them yet.
        as_of_time=state.as_of_time or standing.window_start,
        as_of_offsets=dict(state.watermarks),
    )


def is_idle(state: SubjectState, definition: BudgetDefinition, now: datetime) -> bool:
    """Whether the state may be deleted: everything it ever counted has left the window.

    Safe for exactly-once: a contribution re-sent after a crash would be dropped as late
    anyway, since its event time is at or before ``as_of_time``. Publish the final
    (empty) state or a tombstone before deleting.
    """
    if state.as_of_time is None:
        return not state.buckets
    return window_view(definition.window, now).bucket_of(state.as_of_time.timestamp()) is None


_encoder = msgspec.json.Encoder(decimal_format="string")
_state_decoder = msgspec.json.Decoder(SubjectState)
_contribution_decoder = msgspec.json.Decoder(Contribution)


def encode_state(state: SubjectState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> SubjectState:
    return _state_decoder.decode(data)


def encode_contribution(contribution: Contribution) -> bytes:
    return _encoder.encode(contribution)


def decode_contribution(data: bytes) -> Contribution:
    return _contribution_decoder.decode(data)


class _Standing(NamedTuple):
    spent_tokens: int
    spent_usd: Decimal
    status: BudgetStatus
    threshold_pct: int | None
    reset_at: datetime | None
    window_start: datetime
    window_end: datetime


def _live(
    state: SubjectState, definition: BudgetDefinition, view: WindowView
) -> tuple[dict[int, Spend], dict[int, Spend], dict[int, list[int]]]:
    """Copies of the buckets and alert marks still live at the view's ``now``, and the
    spend per alert window."""
    if state.window != definition.window:
        return {}, {}, {}
    buckets = view.live(state.buckets)
    totals = _totals(buckets, view)
    alerted = {w: list(pcts) for w, pcts in state.alerted.items() if w in totals}
    return buckets, totals, alerted


def _totals(buckets: Mapping[int, Spend], view: WindowView) -> dict[int, Spend]:
    """Spend per alert window."""
    if isinstance(view, SlidingView):
        if not buckets:
            return {}
        spends = buckets.values()
        tokens = sum(spend.tokens for spend in spends)
        return {ROLLING_ALERT_WINDOW: Spend(tokens, sum((s.usd for s in spends), ZERO_USD))}
    totals: dict[int, Spend] = {}
    for bucket, spend in buckets.items():
        window = view.alert_window(bucket)
        totals[window] = _plus(totals.get(window, _NOTHING), spend.tokens, spend.usd)
    return totals


def _plus(spend: Spend, tokens: int, usd: Decimal) -> Spend:
    return Spend(spend.tokens + tokens, spend.usd + usd)


def _rearm(
    alerted: dict[int, list[int]], totals: Mapping[int, Spend], definition: BudgetDefinition
) -> None:
    """Forget alerts for thresholds that spend has fallen back below."""
    for window in list(alerted):
        spend = totals.get(window, _NOTHING)
        still = [p for p in alerted[window] if _reaches(definition, spend.tokens, spend.usd, p)]
        if still:
            alerted[window] = still
        else:
            del alerted[window]


def _cross(
    alerted: dict[int, list[int]],
    totals: Mapping[int, Spend],
    definition: BudgetDefinition,
    view: WindowView,
) -> list[ThresholdCrossing]:
    """Thresholds reached and not yet alerted in their window; marks them alerted."""
    crossings: list[ThresholdCrossing] = []
    for window, spend in sorted(totals.items()):
        crossed = _crossed(definition, spend.tokens, spend.usd)
        done = alerted.get(window, [])
        new = [pct for pct in crossed if pct not in done]
        if not new:
            continue
        alerted[window] = crossed
        span = view.alert_span(window)
        crossings.extend(
            ThresholdCrossing(
                threshold_pct=pct,
                window_start=span.start,
                window_end=span.end,
                spent_tokens=spend.tokens,
                spent_usd=spend.usd,
            )
            for pct in new
        )
    return crossings


def _reaches(definition: BudgetDefinition, tokens: int, usd: Decimal, pct: int) -> bool:
    """Whether spend is at ``pct`` percent of a limit or more."""
    limit_tokens, limit_usd = definition.limit_tokens, definition.limit_usd
    if limit_tokens is not None and tokens * 100 >= pct * limit_tokens:
        return True
    return limit_usd is not None and usd * 100 >= pct * limit_usd


def _crossed(definition: BudgetDefinition, tokens: int, usd: Decimal) -> list[int]:
    return [pct for pct in definition.thresholds_pct if _reaches(definition, tokens, usd, pct)]


def _standing(
    buckets: Mapping[int, Spend],
    totals: Mapping[int, Spend],
    definition: BudgetDefinition,
    view: WindowView,
) -> _Standing:
    """Where the budget stands at the view's ``now``."""
    spend = totals.get(view.current_window, _NOTHING)
    tokens, usd = spend.tokens, spend.usd
    crossed = _crossed(definition, tokens, usd)
    exceeded = _reaches(definition, tokens, usd, 100)
    if exceeded:
        status = BudgetStatus.EXCEEDED
    elif crossed and crossed[0] < 100:
        status = BudgetStatus.WARNING
    else:
        status = BudgetStatus.OK
    reset_at = None
    if exceeded:
        counted = [(bucket, spend) for bucket, spend in buckets.items() if view.counts(bucket)]
        reset_at = _reset_at(counted, tokens, usd, definition, view)
    return _Standing(
        spent_tokens=tokens,
        spent_usd=usd,
        status=status,
        threshold_pct=crossed[-1] if crossed else None,
        reset_at=reset_at,
        window_start=view.span.start,
        window_end=view.window_end(buckets),
    )


def _reset_at(
    counted: Iterable[tuple[int, Spend]],
    tokens: int,
    usd: Decimal,
    definition: BudgetDefinition,
    view: WindowView,
) -> datetime:
    """The first instant at which enough spend has left the window to be under every limit."""
    for bucket, spend in sorted(counted, key=lambda item: view.leaves_at(item[0])):
        tokens -= spend.tokens
        usd -= spend.usd
        if not _reaches(definition, tokens, usd, 100):
            return utc(view.leaves_at(bucket))
    return view.span.end  # unreachable: limits are positive, so an empty window is under


def _published(
    standing: _Standing, definition: BudgetDefinition, view: WindowView, as_of: datetime | None
) -> Published:
    return Published(
        status=standing.status,
        spent_tokens=standing.spent_tokens,
        spent_usd=standing.spent_usd,
        threshold_pct=standing.threshold_pct,
        reset_at=standing.reset_at,
        period_start=view.period_start,
        as_of_time=as_of,
        limit_tokens=definition.limit_tokens,
        limit_usd=definition.limit_usd,
        action=definition.action,
    )
