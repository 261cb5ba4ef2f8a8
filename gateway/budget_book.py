"""What the gateway knows of blocking budgets, and whether a call may spend them.

A blocking budget binds from its *definition* (the budgets file, and the definitions
topic): a subject the stream has published nothing for yet starts at zero spent, and
every call under it is reserved against its limit from the first one. The stream's
``BudgetState`` for a subject, when there is one, says what it has counted.

Between the stream's count and the truth stand the calls it has not seen: those in flight
(held at their estimate) and those finished after the state's ``as_of_time``. Alone, an
instance counts its own (``solo``: no ``ShareView``). With others it cannot see theirs as
they happen, so its own holdings stay within its share of the budget's free headroom,
less what each other instance may hold (``gateway.budget_shares``); a call that fits the
budget but not the share raises ``ShareExhausted``, which the caller answers by waiting
for the shares to follow demand.

Lookup cost: the subjects a call falls under are found once per distinct set of call
dimensions and remembered until a definition or a subject is added; a call then costs a
few dictionary lookups per budget it falls under. Used from one event loop, no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from urllib.parse import quote

from gateway.budget_ledger import Ledger
from gateway.budget_shares import Cut, ShareView
from gateway.budget_verdicts import (
    IN_FLIGHT_RETRY_S,
    NO_BUDGET,
    BudgetHeadroom,
    ShareExhausted,
    Standing,
    graver,
    stream_spend,
    tightest,
    verdict,
)
from gateway.errors import BudgetExceeded
from tollgate.budget_definitions import BudgetIndex
from tollgate.contract import (
    BudgetAction,
    BudgetDefinition,
    BudgetState,
    Dimension,
    GatewayClaims,
    SubjectClaim,
)

FINISHED_TTL_S = 60.0
"""How long a finished call counts locally when no state covering it arrives."""
FAIL_CLOSED_RETRY_S = 5.0
DEMAND_WINDOW_S = 1.0
"""An instance's demand on a subject: what it admitted in this last while, plus waiting."""
SHARED_COVER_MARGIN_S = 1.0
"""With several instances a state's ``as_of_time`` can pass a call another instance's
event has not reached the stream for yet; a finished call stops counting only once the
stream's state is this much past it."""

_ZERO = Decimal(0)
_ORDER = {dimension: index for index, dimension in enumerate(Dimension)}
_DIMENSIONS = tuple(Dimension)

Shape = tuple[Dimension, ...]
"""The dimensions a budget's scope names, in subject order."""


class Reservation:
    """A call's estimate, held against every blocking budget it falls under until it ends."""

    __slots__ = ("_ledgers", "_open", "_tokens", "_usd")

    def __init__(self, ledgers: list[Ledger], tokens: int, usd: Decimal) -> None:
        self._ledgers = ledgers
        self._tokens = tokens
        self._usd = usd
        self._open = True

    @property
    def holds_budgets(self) -> bool:
        """Whether any blocking budget counts this call (else finishing it is a no-op)."""
        return bool(self._ledgers)

    @property
    def counts_usd(self) -> bool:
        """Whether a budget it falls under has a dollar limit (else its cost is not needed)."""
        return any(ledger.limit_usd is not None for ledger in self._ledgers)

    def finish(self, tokens: int, usd: Decimal, end_time: datetime) -> None:
        """The call is done and used this much; it counts until the stream has seen it."""
        if self._release():
            for ledger in self._ledgers:
                ledger.record_finished(end_time, tokens, usd)

    def cancel(self) -> None:
        """The call used nothing: release its estimate."""
        self._release()

    def _release(self) -> bool:
        if not self._open:
            return False
        self._open = False
        for ledger in self._ledgers:
            ledger.release(self._tokens, self._usd)
        return True


_NOTHING_RESERVED = Reservation([], 0, _ZERO)


class BudgetBook:
    """The blocking budgets of every subject, and this instance's uncounted usage."""

    def __init__(
        self,
        fail_open: bool,
        definitions: Iterable[BudgetDefinition] = (),
        shares: ShareView | None = None,
    ) -> None:
        self._fail_open = fail_open
        self._caught_up = False
        self.shares = shares
        self._cover_margin = timedelta(seconds=SHARED_COVER_MARGIN_S if shares else 0)
        self._definitions = BudgetIndex(definitions)
        self._ledgers: dict[str, Ledger] = {}
        self._shapes: dict[Shape, dict[str, dict[str, Ledger]]] = {}
        """Blocking subjects only: shape → subject → budget_id → ledger."""
        self._matches: dict[tuple[str | None, ...], list[Ledger]] = {}
        """Call dimensions → the blocking subjects they fall under (a cache)."""
        self._active: set[Ledger] = set()
        """Subjects this instance claims or wants something of: the ones it announces."""

    def __len__(self) -> int:
        return len(self._ledgers)

    def __contains__(self, key: object) -> bool:
        return key in self._ledgers

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    @property
    def joined(self) -> bool:
        """Part of the other instances' cut now (always, alone)."""
        return self.shares is None or self.shares.cut_at(time.time()) is not None

    def mark_caught_up(self) -> None:
        """The feed has read the state and definitions to their end once."""
        self._caught_up = True

    # -- what the stream and the operators say ------------------------------------------

    def apply(self, state: BudgetState, published_s: float | None = None) -> None:
        """Take a newer state for its key; finished calls it covers stop counting locally."""
        ledger = self._ledgers.get(state.key())
        if ledger is None:
            ledger = self._ledger(
                state.key(),
                state.budget_id,
                state.subject,
                dict(state.scope),
                self._definitions.get(state.budget_id),
            )
        was_blocking = ledger.blocking
        ledger.take_state(
            state, state.as_of_time.timestamp() if published_s is None else published_s
        )
        if self.shares is None:
            ledger.forget_finished_until(state.as_of_time)
        if ledger.blocking != was_blocking:
            self._reindex(ledger)

    def remove(self, key: str) -> None:
        """Forget a subject's states (a tombstone on the state topic)."""
        ledger = self._ledgers.get(key)
        if ledger is not None:
            ledger.states.clear()
            if ledger.definition is None:
                self._drop(ledger)

    def apply_definition(self, definition: BudgetDefinition) -> None:
        """Add, change or (``deleted``) retire a budget."""
        self._definitions.apply_definition(definition)
        current = self._definitions.get(definition.budget_id)
        for ledger in [x for x in self._ledgers.values() if x.budget_id == definition.budget_id]:
            ledger.definition = current
            ledger.share_cache = ledger.reset_cache = None
            if current is None and not ledger.states:
                self._drop(ledger)
            else:
                self._reindex(ledger)
        self._matches.clear()

    def remove_definition(self, budget_id: str) -> None:
        """Forget a budget (a tombstone on the definitions topic)."""
        definition = self._definitions.get(budget_id)
        if definition is not None:
            self.apply_definition(
                BudgetDefinition(
                    budget_id=budget_id,
                    scope=definition.scope,
                    window=definition.window,
                    limit_tokens=definition.limit_tokens,
                    limit_usd=definition.limit_usd,
                    deleted=True,
                )
            )

    # -- admission ----------------------------------------------------------------------

    def admit(
        self,
        dimensions: Mapping[Dimension, str | None],
        est_tokens: int,
        est_usd: Decimal,
        now: datetime,
    ) -> tuple[Reservation, BudgetHeadroom]:
        """Reserve a call's estimate, or raise ``BudgetExceeded`` naming the budget.

        Refused for good (until the window frees up) when the budget is spent or this
        call alone would pass it; refused for a second when calls in flight or not yet
        counted stand in the way; ``ShareExhausted`` when it fits the budget but not this
        instance's share of it.
        """
        if not self._caught_up and not self._fail_open:
            raise BudgetExceeded(
                "budget state is not known yet and the gateway is configured to fail closed",
                retry_after_s=FAIL_CLOSED_RETRY_S,
                budget_id="unknown",
            )
        ledgers = self._applicable(dimensions)
        if not ledgers:
            return _NOTHING_RESERVED, NO_BUDGET
        cut = None
        if self.shares is not None:
            cut = self.shares.cut_at(now.timestamp())
        refusal: BudgetExceeded | None = None
        standings = []
        for ledger in ledgers:
            standing = self._standing(ledger, cut, now)
            standings.append(standing)
            found = verdict(standing, est_tokens, est_usd, now)
            if found is not None and graver(found, refusal):
                refusal = found
        if (
            refusal is None
            and self.shares is not None
            and cut is None
            and not (self._fail_open and self.shares.ever_joined)
        ):
            refusal = ShareExhausted(
                "this gateway instance has not joined the others yet (its claims are not "
                "back from the broker); retry in a moment",
                retry_after_s=IN_FLIGHT_RETRY_S,
                budget_id=ledgers[0].budget_id,
            )
        if refusal is not None:
            raise refusal
        for ledger in ledgers:
            ledger.reserve(est_tokens, est_usd)
            self._active.add(ledger)
        return Reservation(ledgers, est_tokens, est_usd), tightest(
            standings, est_tokens, est_usd, now
        )

    async def admit_waiting(
        self,
        dimensions: Mapping[Dimension, str | None],
        est_tokens: int,
        est_usd: Decimal,
        wait_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> tuple[Reservation, BudgetHeadroom]:
        """``admit``, waiting up to ``wait_s`` while only this instance's share is short.

        The wait is announced as demand, so the shares move toward this instance; the
        refusal that ends an unsuccessful wait carries a one-second ``Retry-After``.
        """
        try:
            return self.admit(dimensions, est_tokens, est_usd, clock())
        except ShareExhausted:
            if wait_s <= 0 or self.shares is None:
                raise
        ledgers = self._applicable(dimensions)
        for ledger in ledgers:
            ledger.waiting_tokens += est_tokens
            ledger.waiting_usd += est_usd
            self._active.add(ledger)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                await asyncio.sleep(self.shares.period_s)
                try:
                    return self.admit(dimensions, est_tokens, est_usd, clock())
                except ShareExhausted:
                    if time.monotonic() >= deadline:
                        raise
        finally:
            for ledger in ledgers:
                ledger.waiting_tokens -= est_tokens
                ledger.waiting_usd -= est_usd

    # -- announcing ---------------------------------------------------------------------

    def announcement(self, instance_id: str, now: datetime) -> GatewayClaims:
        """This instance's claims as of ``now``; marks what it had admitted by then."""
        now_s = now.timestamp()
        shares = self.shares
        cut_s = None
        keep_after_s = now_s - DEMAND_WINDOW_S
        if shares is not None:
            cut_s = (now_s - shares.delay_s) // shares.period_s * shares.period_s
        claims = []
        for ledger in list(self._active):
            self._forget_covered(ledger, ledger.state_at(cut_s), now)
            before_tokens, before_usd = ledger.admitted_at(now_s - DEMAND_WINDOW_S)
            demand_tokens = ledger.admitted_tokens - before_tokens + ledger.waiting_tokens
            demand_usd = ledger.admitted_usd - before_usd + ledger.waiting_usd
            if ledger.touched:
                ledger.mark(now_s, keep_after_s)
            if ledger.claimed_tokens or ledger.claimed_usd or demand_tokens or demand_usd:
                claims.append(
                    SubjectClaim(
                        key=ledger.key,
                        claimed_tokens=max(ledger.claimed_tokens, 0),
                        claimed_usd=max(ledger.claimed_usd, _ZERO),
                        demand_tokens=max(demand_tokens, 0),
                        demand_usd=max(demand_usd, _ZERO),
                    )
                )
            elif not ledger.waiting_tokens and not ledger.waiting_usd:
                self._active.discard(ledger)
        return GatewayClaims(instance_id=instance_id, sent_at=now, claims=claims)

    # -- inside -------------------------------------------------------------------------

    def _standing(self, ledger: Ledger, cut: Cut | None, now: datetime) -> Standing:
        state = ledger.state_at(None if cut is None else cut.cut_s)
        if self.shares is None:
            # Shared, the announcement forgets covered calls every period: later is safe.
            self._forget_covered(ledger, state, now)
        spent_tokens, spent_usd = stream_spend(state, now)
        latest = ledger.latest
        if latest is not state and latest is not None:
            # A state newer than the cut's: every instance will use it soon. Counting the
            # larger spend of the two, and refusing if it blocks, only ever errs safe.
            latest_tokens, latest_usd = stream_spend(latest, now)
            spent_tokens, spent_usd = max(spent_tokens, latest_tokens), max(spent_usd, latest_usd)
            if state is None or latest.is_blocking(now):
                state = latest
        used_tokens = spent_tokens + ledger.finished_tokens
        used_usd = spent_usd + ledger.finished_usd
        standing = Standing(
            ledger,
            state,
            used_tokens,
            used_usd,
            ledger.reserved_tokens,
            ledger.reserved_usd,
            ledger.claimed_tokens,
            ledger.claimed_usd,
        )
        limit_tokens, limit_usd = ledger.limit_tokens, ledger.limit_usd
        if self.shares is None:
            return standing
        if cut is None:
            # Cut off from the others after having been with them: an even share.
            share = 1.0 / self.shares.members_seen
            if limit_tokens is not None:
                standing.usable_tokens = int(share * (limit_tokens - spent_tokens))
            if limit_usd is not None:
                standing.usable_usd = Decimal(share) * (limit_usd - spent_usd)
            return standing
        cached = ledger.share_cache
        if cached is not None and cached[0] is cut and cached[1] is latest:
            _, _, others_tokens, others_usd, usable_tokens, usable_usd = cached
            standing.held_tokens += others_tokens
            standing.held_usd += others_usd
            standing.usable_tokens, standing.usable_usd = usable_tokens, usable_usd
            return standing
        others_tokens, others_usd = cut.held_by_others(ledger.key)
        standing.held_tokens += others_tokens
        standing.held_usd += others_usd
        key, own = ledger.key, cut.own_id
        share = cut.shares(key).get(own, 0.0)
        # What each other instance may hold now: as announced, or its share of a recent cut.
        potential: dict[str, tuple[int, Decimal]] = {}
        for member in cut.members:
            if member != own:
                potential[member] = cut.held(key, member)
        assert self.shares is not None
        for past in self.shares.recent(now.timestamp()):
            past_state = ledger.state_at(past.cut_s)
            past_tokens, past_usd = stream_spend(past_state, now)
            for member, past_share in past.shares(key).items():
                if member == own:
                    continue
                held_tokens, held_usd = potential.get(member, (0, _ZERO))
                if limit_tokens is not None:
                    held_tokens = max(held_tokens, int(past_share * (limit_tokens - past_tokens)))
                if limit_usd is not None:
                    held_usd = max(held_usd, Decimal(past_share) * (limit_usd - past_usd))
                potential[member] = (held_tokens, held_usd)
        if limit_tokens is not None:
            free = limit_tokens - spent_tokens
            others = sum(tokens for tokens, _ in potential.values())
            standing.usable_tokens = min(int(share * free), free - others)
        if limit_usd is not None:
            free_usd = limit_usd - spent_usd
            others_usd = sum((usd for _, usd in potential.values()), _ZERO)
            standing.usable_usd = min(Decimal(share) * free_usd, free_usd - others_usd)
        # Everything above is a function of the cut and the state: the same until either
        # changes (every period), whatever the number of calls in between.
        ledger.share_cache = (
            cut,
            latest,
            others_tokens,
            others_usd,
            standing.usable_tokens,
            standing.usable_usd,
        )
        return standing

    def _forget_covered(self, ledger: Ledger, state: BudgetState | None, now: datetime) -> None:
        ledger.forget_finished_until(now - timedelta(seconds=FINISHED_TTL_S))
        if state is not None:
            ledger.forget_finished_until(state.as_of_time - self._cover_margin)

    def _applicable(self, dimensions: Mapping[Dimension, str | None]) -> list[Ledger]:
        values = tuple(map(dimensions.get, _DIMENSIONS))
        found = self._matches.get(values)
        if found is not None:
            return found
        if len(self._definitions):
            for match in self._definitions.subjects(dimensions):
                if match.definition.action is BudgetAction.BLOCK and (
                    match.state_key not in self._ledgers
                ):
                    self._ledger(
                        match.state_key,
                        match.definition.budget_id,
                        match.subject,
                        match.scope,
                        match.definition,
                    )
        found = list(self._by_shape(dimensions))
        if len(self._matches) > 65_536:
            self._matches.clear()
        self._matches[values] = found
        return found

    def _by_shape(self, dimensions: Mapping[Dimension, str | None]) -> Iterable[Ledger]:
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

    def _ledger(
        self,
        key: str,
        budget_id: str,
        subject: str,
        scope: dict[Dimension, str],
        definition: BudgetDefinition | None,
    ) -> Ledger:
        ledger = self._ledgers[key] = Ledger(
            key, budget_id, subject, scope, definition, shared=self.shares is not None
        )
        self._reindex(ledger)
        return ledger

    def _reindex(self, ledger: Ledger) -> None:
        self._unindex(ledger)
        if ledger.blocking:
            shape = _shape_of(ledger.scope)
            subjects = self._shapes.setdefault(shape, {})
            subjects.setdefault(ledger.subject, {})[ledger.budget_id] = ledger
        self._matches.clear()

    def _drop(self, ledger: Ledger) -> None:
        self._unindex(ledger)
        self._ledgers.pop(ledger.key, None)
        self._active.discard(ledger)
        self._matches.clear()

    def _unindex(self, ledger: Ledger) -> None:
        shape = _shape_of(ledger.scope)
        subjects = self._shapes.get(shape)
        if subjects is None:
            return
        budgets = subjects.get(ledger.subject)
        if budgets is None or budgets.get(ledger.budget_id) is not ledger:
            return
        del budgets[ledger.budget_id]
        if not budgets:
            del subjects[ledger.subject]
            if not subjects:
                del self._shapes[shape]
        self._matches.clear()


def _shape_of(scope: Mapping[Dimension, str]) -> Shape:
    return tuple(sorted((Dimension(d) for d in scope), key=_ORDER.__getitem__))


@lru_cache(maxsize=16_384)
def _subject_part(dimension: Dimension, value: str) -> str:
    """One ``dimension=value`` of a subject key, as ``tollgate.contract.subject_key`` writes it."""
    return f"{dimension.value}={quote(value, safe='')}"
