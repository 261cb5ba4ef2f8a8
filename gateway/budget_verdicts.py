"""Whether a call fits the budgets it falls under, and what each refusal says.

``gateway.budget_book`` gathers, for each budget a call falls under, a ``Standing``: what
the stream counted, what this instance and the others hold, what this instance may hold.
The functions here turn standings into a verdict (admit, refuse for good, refuse for a
second, or wait for a share) and the headroom the call's headers show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from gateway.budget_ledger import Ledger
from gateway.errors import BudgetExceeded
from tollgate.contract import BudgetState

IN_FLIGHT_RETRY_S = 1.0
"""``Retry-After`` when only calls in flight or not yet counted stand between a call and
its budget, or when this instance's share is spent and the wait for more ran out."""

_ZERO = Decimal(0)


class ShareExhausted(BudgetExceeded):
    """The call fits its budget, but not this instance's share of it: waiting may help."""


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


@dataclass(slots=True)
class Standing:
    """One subject's numbers for one decision."""

    ledger: Ledger
    state: BudgetState | None
    used_tokens: int
    """Surely used: spent by the stream's account plus this instance's finished calls."""
    used_usd: Decimal
    held_tokens: int
    """On top of ``used``: reserved here, and held by the other instances as announced."""
    held_usd: Decimal
    own_tokens: int = 0
    """This instance's holdings: reserved plus finished and not yet counted."""
    own_usd: Decimal = _ZERO
    usable_tokens: int | None = None
    """What this instance's holdings may reach; None: no limit on it beyond the budget's."""
    usable_usd: Decimal | None = None


def graver(verdict: BudgetExceeded, than: BudgetExceeded | None) -> bool:
    """A refusal for good beats a wait; between two of a kind, the later reset wins."""
    if than is None:
        return True
    waits, waited = isinstance(verdict, ShareExhausted), isinstance(than, ShareExhausted)
    if waits != waited:
        return waited
    return verdict.retry_after_s > than.retry_after_s


def stream_spend(state: BudgetState | None, now: datetime) -> tuple[int, Decimal]:
    """The spend of the state's current window still standing at ``now``.

    Nothing once the window has ended, or once ``reset_at`` has passed: the stream then
    expects the spend under the limit, and waiting for a new state could wait for ever
    on a subject that is refused and so produces no usage.
    """
    if state is None:
        return 0, _ZERO
    if now >= state.window_end or (state.reset_at is not None and now >= state.reset_at):
        return 0, _ZERO
    return state.spent_tokens, state.spent_usd


def verdict(
    standing: Standing, est_tokens: int, est_usd: Decimal, now: datetime
) -> BudgetExceeded | None:
    ledger, state = standing.ledger, standing.state
    if state is not None and now < state.window_end and state.is_blocking(now):
        return _refusal(ledger, state, state.spent_tokens, state.spent_usd, None, now)
    used_tokens, used_usd = standing.used_tokens, standing.used_usd
    if _over(ledger, used_tokens, used_usd, est_tokens, est_usd):
        return _refusal(ledger, state, used_tokens, used_usd, (est_tokens, est_usd), now)
    with_held_tokens = used_tokens + standing.held_tokens
    with_held_usd = used_usd + standing.held_usd
    if _over(ledger, with_held_tokens, with_held_usd, est_tokens, est_usd):
        left = _left(ledger, with_held_tokens, with_held_usd)
        return BudgetExceeded(
            f"budget {ledger.budget_id!r} for {ledger.subject} has {left} left with calls "
            f"in flight, not enough for this call; retry when they finish",
            retry_after_s=IN_FLIGHT_RETRY_S,
            budget_id=ledger.budget_id,
        )
    if standing.usable_tokens is not None and (
        standing.own_tokens + est_tokens > standing.usable_tokens
    ):
        return _share_refusal(ledger)
    if standing.usable_usd is not None and (standing.own_usd + est_usd > standing.usable_usd):
        return _share_refusal(ledger)
    return None


def _share_refusal(ledger: Ledger) -> ShareExhausted:
    return ShareExhausted(
        f"budget {ledger.budget_id!r} for {ledger.subject} is being spent through other "
        f"gateway instances too, and this one's share of what is left is in use; retry "
        f"in a moment",
        retry_after_s=IN_FLIGHT_RETRY_S,
        budget_id=ledger.budget_id,
    )


def _over(ledger: Ledger, tokens: int, usd: Decimal, est_tokens: int, est_usd: Decimal) -> bool:
    """Spent already (at the limit counts as spent), or this call would go past the limit."""
    limit_tokens, limit_usd = ledger.limit_tokens, ledger.limit_usd
    if limit_tokens is not None and (tokens >= limit_tokens or tokens + est_tokens > limit_tokens):
        return True
    return limit_usd is not None and (usd >= limit_usd or usd + est_usd > limit_usd)


def _refusal(
    ledger: Ledger,
    state: BudgetState | None,
    tokens: int,
    usd: Decimal,
    estimate: tuple[int, Decimal] | None,
    now: datetime,
) -> BudgetExceeded:
    reset = ledger.reset_time(state, now)
    if estimate is None or _over(ledger, tokens, usd, 0, _ZERO):
        standing = f"is spent ({_spend(ledger, tokens, usd)})"
    else:
        standing = f"has {_left(ledger, tokens, usd)} left, not enough for this call"
    return BudgetExceeded(
        f"budget {ledger.budget_id!r} for {ledger.subject} {standing}; "
        f"it resets at {reset.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        retry_after_s=max(1.0, (reset - now).total_seconds()),
        budget_id=ledger.budget_id,
    )


def _spend(ledger: Ledger, tokens: int, usd: Decimal) -> str:
    """``1,000,000 of 1,000,000 tokens``, naming the limit that is reached."""
    limit_tokens, limit_usd = ledger.limit_tokens, ledger.limit_usd
    if limit_tokens is not None and (tokens >= limit_tokens or limit_usd is None):
        return f"{tokens:,} of {limit_tokens:,} tokens"
    if limit_usd is not None:
        return f"{_usd(usd)} of {_usd(limit_usd)}"
    return f"{tokens:,} tokens"


def _left(ledger: Ledger, tokens: int, usd: Decimal) -> str:
    parts = []
    if ledger.limit_tokens is not None:
        parts.append(f"{max(ledger.limit_tokens - tokens, 0):,} of {ledger.limit_tokens:,} tokens")
    if ledger.limit_usd is not None:
        parts.append(f"{_usd(max(ledger.limit_usd - usd, _ZERO))} of {_usd(ledger.limit_usd)}")
    return " and ".join(parts)


def _usd(amount: Decimal) -> str:
    cents = amount.quantize(Decimal("0.01"))
    return f"${cents:,}" if cents == amount else f"${amount.normalize():,f}"


def tightest(
    standings: list[Standing], est_tokens: int, est_usd: Decimal, now: datetime
) -> BudgetHeadroom:
    """The headroom of the budget with the smallest fraction left, this call included."""
    best: BudgetHeadroom = NO_BUDGET
    best_fraction = 2.0
    for standing in standings:
        ledger = standing.ledger
        used_tokens = standing.used_tokens + standing.held_tokens + est_tokens
        used_usd = standing.used_usd + standing.held_usd + est_usd
        fraction = 1.0
        remaining_tokens = remaining_usd = None
        limit_tokens, limit_usd = ledger.limit_tokens, ledger.limit_usd
        if limit_tokens is not None:
            remaining_tokens = max(limit_tokens - used_tokens, 0)
            fraction = min(fraction, remaining_tokens / limit_tokens) if limit_tokens else 0.0
        if limit_usd is not None:
            remaining_usd = max(limit_usd - used_usd, _ZERO)
            fraction = min(fraction, float(remaining_usd / limit_usd)) if limit_usd else 0.0
        if fraction < best_fraction:
            best_fraction = fraction
            best = BudgetHeadroom(
                remaining_tokens,
                remaining_usd,
                ledger.reset_time(standing.state, now),
                ledger.budget_id,
            )
    return best
