"""One budget subject as a gateway instance sees it: the stream's states, its own calls.

A ``Ledger`` exists for every blocking budget subject the instance has a state for or has
admitted a call under. It holds:

- the stream's recent states, each with the time the stream published it, so that every
  instance can pick the same one (the newest published before the current cut);
- this instance's calls the stream cannot have counted yet: reservations of calls in
  flight, and the real usage of finished calls until a state covers their ``end_time``;
- the running total of estimates it ever admitted, marked at each announcement, so that
  what it admitted in the last second (its demand) is one subtraction.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from decimal import Decimal
from typing import Any

from tollgate.budget_windows import window_view
from tollgate.contract import BudgetAction, BudgetDefinition, BudgetState, Dimension

ZERO_USD = Decimal(0)
STATES_KEPT = 16
"""Recent states kept per subject; the cut's one is among them unless the stream floods."""


class Ledger:
    """What one instance knows and holds of one budget subject."""

    __slots__ = (
        "admitted_tokens",
        "admitted_usd",
        "budget_id",
        "definition",
        "finished",
        "finished_tokens",
        "finished_usd",
        "key",
        "marks",
        "reserved_tokens",
        "reserved_usd",
        "reset_cache",
        "scope",
        "share_cache",
        "shared",
        "states",
        "subject",
        "touched",
        "waiting_tokens",
        "waiting_usd",
    )

    def __init__(
        self,
        key: str,
        budget_id: str,
        subject: str,
        scope: dict[Dimension, str],
        definition: BudgetDefinition | None,
        shared: bool = False,
    ) -> None:
        self.key = key
        self.shared = shared
        """Instances share the budget: a finished call counts until the cut's state covers
        it, even if a newer state seems to already."""
        self.budget_id = budget_id
        self.subject = subject
        self.scope = scope
        self.definition = definition
        self.states: deque[tuple[float, BudgetState]] = deque()
        """(published at, in Unix seconds; state), oldest first."""
        self.reserved_tokens = 0
        self.reserved_usd = ZERO_USD
        self.finished: deque[tuple[datetime, int, Decimal]] = deque()
        """(end_time, tokens, usd) of finished calls, in the order they finished."""
        self.finished_tokens = 0
        self.finished_usd = ZERO_USD
        self.admitted_tokens = 0
        self.admitted_usd = ZERO_USD
        """Every estimate ever admitted here (never decreases)."""
        self.marks: deque[tuple[float, int, Decimal]] = deque()
        """(announced at, admitted_tokens, admitted_usd) at announcements after a change."""
        self.touched = False
        """Admitted something since the last announcement."""
        self.waiting_tokens = 0
        self.waiting_usd = ZERO_USD
        self.share_cache: tuple[Any, ...] | None = None
        """(cut, newest state, what the others hold, what this instance may hold), as computed."""
        self.reset_cache: tuple[int, datetime] | None = None
        """(second, reset time) of the window the definition gives, without a state."""

    # -- what the budget is -------------------------------------------------------------

    @property
    def latest(self) -> BudgetState | None:
        return self.states[-1][1] if self.states else None

    @property
    def blocking(self) -> bool:
        if self.definition is not None:
            return self.definition.action is BudgetAction.BLOCK
        latest = self.latest
        return latest is not None and latest.action is BudgetAction.BLOCK

    @property
    def limit_tokens(self) -> int | None:
        if self.definition is not None:
            return self.definition.limit_tokens
        latest = self.latest
        return latest.limit_tokens if latest is not None else None

    @property
    def limit_usd(self) -> Decimal | None:
        if self.definition is not None:
            return self.definition.limit_usd
        latest = self.latest
        return latest.limit_usd if latest is not None else None

    def state_at(self, cut_s: float | None) -> BudgetState | None:
        """The newest state published at or before ``cut_s`` (None: the newest of all)."""
        if cut_s is None:
            return self.latest
        for published_s, state in reversed(self.states):
            if published_s <= cut_s:
                return state
        return None

    def reset_time(self, state: BudgetState | None, now: datetime) -> datetime:
        """When spend counted now frees up: the state's reset time or window end, else the
        window the definition gives, computed as the stream computes it."""
        if state is not None:
            if state.reset_at is not None and state.reset_at > now:
                return state.reset_at
            if state.window_end > now:
                return state.window_end
        if self.definition is not None:
            second = int(now.timestamp())
            cached = self.reset_cache
            if cached is None or cached[0] != second:
                cached = self.reset_cache = (
                    second,
                    window_view(self.definition.window, now).span.end,
                )
            return cached[1]
        return now

    # -- the stream's states ------------------------------------------------------------

    def take_state(self, state: BudgetState, published_s: float) -> None:
        states = self.states
        if states and published_s < states[-1][0]:
            published_s = states[-1][0]  # a clock going back must not reorder them
        states.append((published_s, state))
        while len(states) > STATES_KEPT:
            states.popleft()

    # -- local calls --------------------------------------------------------------------

    @property
    def claimed_tokens(self) -> int:
        return self.reserved_tokens + self.finished_tokens

    @property
    def claimed_usd(self) -> Decimal:
        return self.reserved_usd + self.finished_usd

    def reserve(self, tokens: int, usd: Decimal) -> None:
        self.reserved_tokens += tokens
        self.reserved_usd += usd
        self.admitted_tokens += tokens
        self.admitted_usd += usd
        self.touched = True

    def release(self, tokens: int, usd: Decimal) -> None:
        self.reserved_tokens -= tokens
        self.reserved_usd -= usd

    def record_finished(self, end_time: datetime, tokens: int, usd: Decimal) -> None:
        latest = self.latest
        if (tokens or usd) and (self.shared or latest is None or end_time > latest.as_of_time):
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

    # -- marks at announcements ---------------------------------------------------------

    def mark(self, announced_s: float, keep_after_s: float) -> None:
        """Remember the admitted totals as of an announcement; drop marks no longer needed."""
        self.marks.append((announced_s, self.admitted_tokens, self.admitted_usd))
        self.touched = False
        marks = self.marks
        while len(marks) > 1 and marks[1][0] <= keep_after_s:
            marks.popleft()

    def admitted_at(self, at_s: float) -> tuple[int, Decimal]:
        """The admitted totals as of ``at_s`` (as of the last announcement before it).

        No mark at or before it means nothing had been admitted by then: an announcement
        marks every ledger admitted under since the one before.
        """
        for marked_s, tokens, usd in reversed(self.marks):
            if marked_s <= at_s:
                return tokens, usd
        return 0, ZERO_USD
