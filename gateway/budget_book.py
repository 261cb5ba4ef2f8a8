"""What the gateway knows of blocking budgets: the stream's state, plus its own calls.

The stream publishes one ``BudgetState`` per budget and subject; ``BudgetFeed`` copies
them into this book. ``admit`` decides, for each call, whether a blocking budget the
call falls under is spent, and reserves the call's estimate against each such budget.

The stream's state lags the gateway's traffic, so the book also counts locally what the
stream cannot have seen yet: the estimates of calls in flight, and the real usage of
calls that finished after the state's ``as_of_time``. A finished call stops counting
once a state for its subject covers its ``end_time``, or after ``FINISHED_TTL_S`` in any
case, so a stalled stream cannot refuse a subject for ever. This bounds the overshoot of
a budget under concurrency without any coordination between gateway instances.

Lookup cost: states are indexed by the dimensions their scope names (a *shape*); a call
costs one dictionary lookup per shape, whatever the number of states. The book is used
from one event loop and takes no locks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from urllib.parse import quote

from gateway.errors import BudgetExceeded
from tollgate.contract import BudgetAction, BudgetState, Dimension

FINISHED_TTL_S = 60.0
"""How long a finished call counts locally when no state covering it arrives."""
IN_FLIGHT_RETRY_S = 1.0
"""``Retry-After`` when only calls still in flight stand between a call and its budget."""
FAIL_CLOSED_RETRY_S = 5.0

_ZERO = Decimal(0)
_ORDER = {dimension: index for index, dimension in enumerate(Dimension)}

Shape = tuple[Dimension, ...]
"""The dimensions a budget's scope names, in subject order."""


@dataclass(frozen=True, slots=True)
class BudgetHeadroom:
    """What is left of the tightest blocking budget a call falls under, for its headers.

    All fields are None when no blocking budget applies.
    """

    remaining_tokens: int | None = None
    remaining_usd: Decimal | None = None
    reset_at: datetime | None = None
    budget_id: str | None = None


NO_BUDGET = BudgetHeadroom()


class _Entry:
    """One budget state and the local usage the stream has not counted in it yet."""

    __slots__ = (
        "finished",
        "finished_tokens",
        "finished_usd",
        "reserved_tokens",
        "reserved_usd",
        "state",
    )

    def __init__(self, state: BudgetState) -> None:
        self.state = state
        self.reserved_tokens = 0
        self.reserved_usd = _ZERO
        self.finished: deque[tuple[datetime, int, Decimal]] = deque()
        """(end_time, tokens, usd) of finished calls, in the order they finished."""
        self.finished_tokens = 0
        self.finished_usd = _ZERO

    def record_finished(self, end_time: datetime, tokens: int, usd: Decimal) -> None:
        if (tokens or usd) and end_time > self.state.as_of_time:
            self.finished.append((end_time, tokens, usd))
            self.finished_tokens += tokens
            self.finished_usd += usd

    def forget_finished_until(self, until: datetime) -> None:
        """Stop counting finished calls that ended at or before ``until``.

        Calls finish in roughly ``end_time`` order; one that finished out of order stays
        counted until those before it go, which errs on the safe side.
        """
        finished = self.finished
        while finished and finished[0][0] <= until:
            _, tokens, usd = finished.popleft()
            self.finished_tokens -= tokens
            self.finished_usd -= usd


class Reservation:
    """A call's estimate, held against every blocking budget it falls under until it ends."""

    __slots__ = ("_entries", "_open", "_tokens", "_usd")

    def __init__(self, entries: list[_Entry], tokens: int, usd: Decimal) -> None:
        self._entries = entries
        self._tokens = tokens
        self._usd = usd
        self._open = True

    @property
    def holds_budgets(self) -> bool:
        """Whether any blocking budget counts this call (else finishing it is a no-op)."""
        return bool(self._entries)

    def finish(self, tokens: int, usd: Decimal, end_time: datetime) -> None:
        """The call is done and used this much; it counts until the stream has seen it."""
        if self._release():
            for entry in self._entries:
                entry.record_finished(end_time, tokens, usd)

    def cancel(self) -> None:
        """The call used nothing: release its estimate."""
        self._release()

    def _release(self) -> bool:
        if not self._open:
            return False
        self._open = False
        for entry in self._entries:
            entry.reserved_tokens -= self._tokens
            entry.reserved_usd -= self._usd
        return True


_NOTHING_RESERVED = Reservation([], 0, _ZERO)


class BudgetBook:
    """The budget states of every subject, and the gateway's own uncounted usage."""

    def __init__(self, fail_open: bool) -> None:
        self._fail_open = fail_open
        self._caught_up = False
        self._entries: dict[str, _Entry] = {}
        self._shapes: dict[Shape, dict[str, dict[str, _Entry]]] = {}
        """Blocking states only: shape → subject → budget_id → entry."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    def mark_caught_up(self) -> None:
        """The feed has read the state topic to its end once: the book is complete."""
        self._caught_up = True

    def apply(self, state: BudgetState) -> None:
        """Take a newer state for its key; finished calls it covers stop counting locally."""
        key = state.key()
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(state)
        else:
            self._unindex(entry.state)
            entry.state = state
            entry.forget_finished_until(state.as_of_time)
        if state.action is BudgetAction.BLOCK:
            shape = _shape_of(state.scope)
            subjects = self._shapes.setdefault(shape, {})
            subjects.setdefault(state.subject, {})[state.budget_id] = entry

    def remove(self, key: str) -> None:
        """Forget a key (a tombstone on the state topic)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unindex(entry.state)

    def admit(
        self,
        dimensions: Mapping[Dimension, str | None],
        est_tokens: int,
        est_usd: Decimal,
        now: datetime,
    ) -> tuple[Reservation, BudgetHeadroom]:
        """Reserve a call's estimate, or raise ``BudgetExceeded`` naming the budget.

        A call is refused when a blocking budget it falls under is spent by the stream's
        account, or would be by the stream's account plus the local usage plus this
        call's estimate. When several budgets refuse, the one that frees up last is named.
        """
        if not self._caught_up and not self._fail_open:
            raise BudgetExceeded(
                "budget state is not known yet and the gateway is configured to fail closed",
                retry_after_s=FAIL_CLOSED_RETRY_S,
                budget_id="unknown",
            )
        if not self._shapes:
            return _NOTHING_RESERVED, NO_BUDGET
        entries = list(self._applicable(dimensions))
        if not entries:
            return _NOTHING_RESERVED, NO_BUDGET
        refusal: BudgetExceeded | None = None
        for entry in entries:
            entry.forget_finished_until(now - timedelta(seconds=FINISHED_TTL_S))
            verdict = _verdict(entry, est_tokens, est_usd, now)
            if verdict is not None and (
                refusal is None or verdict.retry_after_s > refusal.retry_after_s
            ):
                refusal = verdict
        if refusal is not None:
            raise refusal
        for entry in entries:
            entry.reserved_tokens += est_tokens
            entry.reserved_usd += est_usd
        return Reservation(entries, est_tokens, est_usd), _tightest(entries, now)

    def _applicable(self, dimensions: Mapping[Dimension, str | None]) -> Iterable[_Entry]:
        for shape, subjects in self._shapes.items():
            parts = []
            for dimension in shape:
                value = dimensions.get(dimension)
                if value is None:
                    break
                parts.append(_subject_part(dimension, value))
            else:
                budgets = subjects.get(",".join(parts))
                if budgets:
                    yield from budgets.values()

    def _unindex(self, state: BudgetState) -> None:
        if state.action is not BudgetAction.BLOCK:
            return
        shape = _shape_of(state.scope)
        subjects = self._shapes.get(shape)
        if subjects is None:
            return
        budgets = subjects.get(state.subject)
        if budgets is None:
            return
        budgets.pop(state.budget_id, None)
        if not budgets:
            del subjects[state.subject]
            if not subjects:
                del self._shapes[shape]


def _shape_of(scope: Mapping[Dimension, str]) -> Shape:
    return tuple(sorted((Dimension(d) for d in scope), key=_ORDER.__getitem__))


@lru_cache(maxsize=16_384)
def _subject_part(dimension: Dimension, value: str) -> str:
    """One ``dimension=value`` of a subject key, as ``tollgate.contract.subject_key`` writes it."""
    return f"{dimension.value}={quote(value, safe='')}"


def _stream_spend(state: BudgetState, now: datetime) -> tuple[int, Decimal]:
    """The spend of the state's current window still standing at ``now``.

    Nothing once the window has ended, or once ``reset_at`` has passed: the stream then
    expects the spend under the limit, and waiting for a new state could wait for ever
    on a subject that is refused and so produces no usage.
    """
    if now >= state.window_end or (state.reset_at is not None and now >= state.reset_at):
        return 0, _ZERO
    return state.spent_tokens, state.spent_usd


def _verdict(
    entry: _Entry, est_tokens: int, est_usd: Decimal, now: datetime
) -> BudgetExceeded | None:
    state = entry.state
    if now < state.window_end and state.is_blocking(now):
        return _refusal(state, state.spent_tokens, state.spent_usd, None, now)
    spent_tokens, spent_usd = _stream_spend(state, now)
    counted_tokens = spent_tokens + entry.finished_tokens
    counted_usd = spent_usd + entry.finished_usd
    if _over(state, counted_tokens, counted_usd, est_tokens, est_usd):
        return _refusal(state, counted_tokens, counted_usd, (est_tokens, est_usd), now)
    if _over(
        state,
        counted_tokens + entry.reserved_tokens,
        counted_usd + entry.reserved_usd,
        est_tokens,
        est_usd,
    ):
        left = _left(
            state, counted_tokens + entry.reserved_tokens, counted_usd + entry.reserved_usd
        )
        return BudgetExceeded(
            f"budget {state.budget_id!r} for {state.subject} has {left} left with calls "
            f"in flight, not enough for this call; retry when they finish",
            retry_after_s=IN_FLIGHT_RETRY_S,
            budget_id=state.budget_id,
        )
    return None


def _over(state: BudgetState, tokens: int, usd: Decimal, est_tokens: int, est_usd: Decimal) -> bool:
    """Spent already (at the limit counts as spent), or this call would go past the limit."""
    limit_tokens, limit_usd = state.limit_tokens, state.limit_usd
    if limit_tokens is not None and (tokens >= limit_tokens or tokens + est_tokens > limit_tokens):
        return True
    return limit_usd is not None and (usd >= limit_usd or usd + est_usd > limit_usd)


def _refusal(
    state: BudgetState,
    tokens: int,
    usd: Decimal,
    estimate: tuple[int, Decimal] | None,
    now: datetime,
) -> BudgetExceeded:
    reset = _reset_time(state, now)
    if estimate is None or _over(state, tokens, usd, 0, _ZERO):
        standing = f"is spent ({_spend(state, tokens, usd)})"
    else:
        standing = f"has {_left(state, tokens, usd)} left, not enough for this call"
    return BudgetExceeded(
        f"budget {state.budget_id!r} for {state.subject} {standing}; "
        f"it resets at {reset.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        retry_after_s=max(1.0, (reset - now).total_seconds()),
        budget_id=state.budget_id,
    )


def _reset_time(state: BudgetState, now: datetime) -> datetime:
    """When the budget frees up: ``reset_at`` while ahead, else the end of the window."""
    if state.reset_at is not None and state.reset_at > now:
        return state.reset_at
    return state.window_end


def _spend(state: BudgetState, tokens: int, usd: Decimal) -> str:
    """``1,000,000 of 1,000,000 tokens``, naming the limit that is reached."""
    limit_tokens, limit_usd = state.limit_tokens, state.limit_usd
    if limit_tokens is not None and (tokens >= limit_tokens or limit_usd is None):
        return f"{tokens:,} of {limit_tokens:,} tokens"
    if limit_usd is not None:
        return f"{_usd(usd)} of {_usd(limit_usd)}"
    return f"{tokens:,} tokens"


def _left(state: BudgetState, tokens: int, usd: Decimal) -> str:
    parts = []
    if state.limit_tokens is not None:
        parts.append(f"{max(state.limit_tokens - tokens, 0):,} of {state.limit_tokens:,} tokens")
    if state.limit_usd is not None:
        parts.append(f"{_usd(max(state.limit_usd - usd, _ZERO))} of {_usd(state.limit_usd)}")
    return " and ".join(parts)


def _usd(amount: Decimal) -> str:
    cents = amount.quantize(Decimal("0.01"))
    return f"${cents:,}" if cents == amount else f"${amount.normalize():,f}"


def _tightest(entries: list[_Entry], now: datetime) -> BudgetHeadroom:
    """The headroom of the budget with the smallest fraction left, local usage included."""
    best: BudgetHeadroom = NO_BUDGET
    best_fraction = 2.0
    for entry in entries:
        state = entry.state
        spent_tokens, spent_usd = _stream_spend(state, now)
        used_tokens = spent_tokens + entry.finished_tokens + entry.reserved_tokens
        used_usd = spent_usd + entry.finished_usd + entry.reserved_usd
        fraction = 1.0
        remaining_tokens = remaining_usd = None
        if state.limit_tokens is not None:
            remaining_tokens = max(state.limit_tokens - used_tokens, 0)
            if state.limit_tokens:
                fraction = min(fraction, remaining_tokens / state.limit_tokens)
            else:
                fraction = 0.0
        if state.limit_usd is not None:
            remaining_usd = max(state.limit_usd - used_usd, _ZERO)
            if state.limit_usd:
                fraction = min(fraction, float(remaining_usd / state.limit_usd))
            else:
                fraction = 0.0
        if fraction < best_fraction:
            best_fraction = fraction
            best = BudgetHeadroom(
                remaining_tokens, remaining_usd, _reset_time(state, now), state.budget_id
            )
    return best
