"""How N gateway instances split a budget's headroom with nothing but Kafka between them.

Every instance announces its *holdings* of each budget subject (``GatewayClaims``: what
its calls in flight reserved plus what its finished calls used that the stream has not
counted yet) and its demand, every ``period_s``, and reads every instance's, its own
included, from the claims topic.

At instant ``t`` every instance looks at the same *cut*: for each instance, its newest
announcement sent at or before ``τ = ⌊(t - delay_s) / period_s⌋ · period_s``. As long as
an announcement reaches every instance within ``delay_s`` (and clocks agree), all
instances hold the same cuts, and with the stream's state published before ``τ`` they
compute the same numbers for a subject of limit ``L``:

- ``free = L - spent(state)``;
- each instance's share ``f_m = β/N + (1 - β) · d_m / Σ d`` of it (``d`` the announced
  demand; ``1/N`` when nobody wants anything), ``Σ f_m = 1``.

Instance ``i`` admits a call of estimate ``e`` only while its own holdings ``h_i`` (known
exactly: they are local) stay within what it may use::

    h_i + e ≤ min( f_i · free,  free - Σ_{m≠i} p_m )
    p_m = max( announced h_m,  max over the cuts of the last W of f_m · free )

``p_m`` bounds what ``m`` can hold now: its holdings as announced, or, if it admitted
since, at most its share of some cut it could have admitted under (``W = delay_s + 2 ·
period_s`` covers every cut since the announcement in the current cut was made). So at
the moment of any admission ``Σ h ≤ free``: spend stays within the limit whatever the
others are doing right now. The README states the bound and its assumptions.

An instance whose own announcement is not in the cut (it has just started, or the broker
does not carry its announcements) has no share: it waits, then refuses with a short
``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from decimal import Decimal

from tollgate.contract import GatewayClaims, SubjectClaim

BETA = 0.2
"""The part of the free headroom split evenly between instances, whatever their demand:
an idle instance can admit its first calls at once instead of waiting for a share."""

ZERO_USD = Decimal(0)

Claims = dict[str, SubjectClaim]
"""One instance's announced claims, by subject key."""


class Cut:
    """Everyone's announcements as of one instant ``cut_s``: the same on every instance."""

    __slots__ = ("_shares", "cut_s", "members", "own_id")

    def __init__(self, cut_s: float, own_id: str, members: dict[str, Claims]) -> None:
        self.cut_s = cut_s
        self.own_id = own_id
        self.members = members
        """Each live instance's claims by subject key (this instance's too, if it is in)."""
        self._shares: dict[str, dict[str, float]] = {}

    @property
    def joined(self) -> bool:
        return self.own_id in self.members

    def held(self, key: str, instance_id: str) -> tuple[int, Decimal]:
        """What ``instance_id`` announced it holds of ``key``."""
        claim = self.members.get(instance_id, {}).get(key)
        if claim is None:
            return 0, ZERO_USD
        return claim.claimed_tokens, claim.claimed_usd

    def held_by_others(self, key: str) -> tuple[int, Decimal]:
        tokens, usd = 0, ZERO_USD
        for instance_id, claims in self.members.items():
            claim = claims.get(key)
            if claim is not None and instance_id != self.own_id:
                tokens += claim.claimed_tokens
                usd += claim.claimed_usd
        return tokens, usd

    def shares(self, key: str) -> dict[str, float]:
        """Every member's fraction of ``key``'s free headroom; they sum to one."""
        shares = self._shares.get(key)
        if shares is None:
            count = len(self.members)
            demands = {m: _demand(claims.get(key)) for m, claims in self.members.items()}
            total = sum(demands.values())
            even = 1.0 / count if count else 0.0
            shares = {
                m: even if total <= 0 else BETA * even + (1.0 - BETA) * demand / total
                for m, demand in demands.items()
            }
            self._shares[key] = shares
        return shares


def _demand(claim: SubjectClaim | None) -> float:
    if claim is None:
        return 0.0
    return float(claim.demand_tokens) + float(claim.demand_usd) * 1e6


class ShareView:
    """The announcements of every live instance, and the cuts they make, recent ones kept."""

    def __init__(self, instance_id: str, period_s: float, delay_s: float, ttl_s: float) -> None:
        self.instance_id = instance_id
        self.period_s = period_s
        self.delay_s = delay_s
        self.ttl_s = ttl_s
        self.window_s = delay_s + 3 * period_s
        """How far back a cut can still matter: every cut since the oldest announcement in
        the current cut was made, with a period to spare."""
        self._announced: dict[str, deque[tuple[float, Claims]]] = {}
        """instance id → (sent at, claims by key), oldest first."""
        self._cuts: deque[tuple[int, Cut]] = deque()
        """(index, cut) of the recent cuts, oldest first, one per period."""
        self.members_seen = 1
        """Instances in the last cut this instance was part of."""
        self.ever_joined = False
        """This instance has been part of a cut: if it drops out, the broker is failing."""
        self.last_echo_s: float | None = None
        """When (monotonic) the broker last brought back one of this instance's own."""

    def take_own(self, announcement: GatewayClaims) -> None:
        """This instance's announcement as it sends it: it counts itself from its own copy,
        as the others will once the broker brings it (within ``delay_s``, by assumption)."""
        self.take(announcement)

    def take(self, announcement: GatewayClaims, now_mono_s: float | None = None) -> None:
        """An announcement read from the claims topic (this instance's own ones too, with
        ``now_mono_s``: proof that the broker carries them)."""
        if announcement.instance_id == self.instance_id and now_mono_s is not None:
            self.last_echo_s = now_mono_s
        sent_s = announcement.sent_at.timestamp()
        history = self._announced.setdefault(announcement.instance_id, deque())
        if history and sent_s <= history[-1][0]:
            return  # a redelivery, or a clock that went back: keep what was counted
        history.append((sent_s, {claim.key: claim for claim in announcement.claims}))
        # One that arrives after a cut it belongs to was made: make the cuts again.
        while self._cuts and sent_s <= self._cuts[-1][1].cut_s:
            self._cuts.pop()

    def cut_at(self, now_s: float) -> Cut | None:
        """The cut at ``now_s``, or None while this instance is not part of it: its own
        announcements are not in it yet, or the broker has not brought one back for half
        the TTL (the others are about to count it gone)."""
        cut = self._current(now_s)
        if not cut.joined:
            return None
        if self.last_echo_s is None or time.monotonic() - self.last_echo_s > self.ttl_s / 2:
            return None
        return cut

    def recent(self, now_s: float) -> list[Cut]:
        """The cuts of the last ``window_s``, the current one last."""
        self._current(now_s)
        return [cut for _, cut in self._cuts]

    def _current(self, now_s: float) -> Cut:
        index = math.floor((now_s - self.delay_s) / self.period_s)
        cuts = self._cuts
        if cuts and cuts[-1][0] == index:
            return cuts[-1][1]
        oldest = index - math.ceil(self.window_s / self.period_s)
        while cuts and (cuts[0][0] < oldest or cuts[-1][0] > index):
            if cuts[-1][0] > index:
                cuts.pop()  # the clock went back
            else:
                cuts.popleft()
        first = cuts[-1][0] + 1 if cuts else oldest
        for at in range(max(first, oldest), index + 1):
            cuts.append((at, self._build(at * self.period_s)))
        self._prune(oldest * self.period_s)
        cut = cuts[-1][1]
        if cut.joined and self.last_echo_s is not None:
            self.members_seen = len(cut.members)
            self.ever_joined = True
        return cut

    def _build(self, cut_s: float) -> Cut:
        members: dict[str, Claims] = {}
        for instance_id, history in self._announced.items():
            latest = None
            for sent_s, claims in history:
                if sent_s > cut_s:
                    break
                latest = (sent_s, claims)
            if latest is not None and latest[0] > cut_s - self.ttl_s:
                members[instance_id] = latest[1]
        return Cut(cut_s, self.instance_id, members)

    def _prune(self, oldest_cut_s: float) -> None:
        """Drop announcements no kept cut can use; forget instances gone for long."""
        for instance_id, history in list(self._announced.items()):
            while len(history) > 1 and history[1][0] <= oldest_cut_s:
                history.popleft()
            if history and history[-1][0] <= oldest_cut_s - 2 * self.ttl_s:
                del self._announced[instance_id]
