"""How N gateway instances split a budget's headroom with nothing but Kafka between them.

Every instance announces its claims (``GatewayClaims``) every ``period_s`` and reads every
instance's, its own included, from the claims topic. At any instant ``t`` all instances
look at the same *cut*: for each instance, its newest announcement sent at or before
``τ = ⌊(t - delay_s) / period_s⌋ · period_s``. As long as an announcement reaches every
instance within ``delay_s`` (and clocks agree), every instance holds the same cut, and with
the same stream state (the newest published before ``τ``) computes the same numbers:

- ``free = limit - spent(state) - Σ claimed`` — what no instance had claimed at the cut;
- instance ``i``'s share ``fᵢ = β/N + (1 - β) · dᵢ / Σ d`` of it, ``dᵢ`` its announced
  demand (``1/N`` when nobody wants anything); ``Σ fᵢ = 1``.

Instance ``i`` admits a call of estimate ``e`` only if what it admitted since its own
announcement in the cut, plus ``e``, fits ``fᵢ · free``. Summed over instances, the calls
admitted since the cut fit ``free``, so spend stays within the limit whatever the others
are doing right now; the proof and its assumptions are in the README.

An instance whose own announcement is not in the cut (it has just started, or the broker
does not carry its announcements) has no share: it waits, then refuses with a short
``Retry-After``.
"""

from __future__ import annotations

import math
from collections import deque
from decimal import Decimal

from tollgate.contract import GatewayClaims, SubjectClaim

BETA = 0.2
"""The part of the free headroom split evenly between instances, whatever their demand:
an idle instance can admit its first calls at once instead of waiting for a share."""

_NO_CLAIM = SubjectClaim(key="")
ZERO_USD = Decimal(0)


class Cut:
    """Everyone's announcements as of one instant ``cut_s``: the same on every instance."""

    __slots__ = ("_claims", "_shares", "_totals", "cut_s", "members", "own_sent_s")

    def __init__(
        self, cut_s: float, own_sent_s: float, members: list[dict[str, SubjectClaim]]
    ) -> None:
        self.cut_s = cut_s
        self.own_sent_s = own_sent_s
        """When this instance sent its announcement in the cut."""
        self.members = members
        """Each instance's claims by subject key; this instance's is the first."""
        self._totals: dict[str, tuple[int, Decimal]] = {}
        self._shares: dict[str, float] = {}
        self._claims = members[0]

    def claimed(self, key: str) -> tuple[int, Decimal]:
        """What all instances claimed on ``key``, as they announced it."""
        total = self._totals.get(key)
        if total is None:
            tokens, usd = 0, ZERO_USD
            for claims in self.members:
                claim = claims.get(key)
                if claim is not None:
                    tokens += claim.claimed_tokens
                    usd += claim.claimed_usd
            total = self._totals[key] = (tokens, usd)
        return total

    def share(self, key: str) -> float:
        """This instance's fraction of ``key``'s free headroom."""
        share = self._shares.get(key)
        if share is None:
            count = len(self.members)
            demands = [self._demand(claims.get(key, _NO_CLAIM)) for claims in self.members]
            total = sum(demands)
            even = 1.0 / count
            share = even if total <= 0 else BETA * even + (1.0 - BETA) * demands[0] / total
            self._shares[key] = share
        return share

    @staticmethod
    def _demand(claim: SubjectClaim) -> float:
        return float(claim.demand_tokens) + float(claim.demand_usd) * 1e6


class ShareView:
    """The announcements of every live instance, and the cut at any instant."""

    def __init__(self, instance_id: str, period_s: float, delay_s: float, ttl_s: float) -> None:
        self.instance_id = instance_id
        self.period_s = period_s
        self.delay_s = delay_s
        self.ttl_s = ttl_s
        self._announced: dict[str, deque[tuple[float, dict[str, SubjectClaim]]]] = {}
        """instance id → (sent at, claims by key), oldest first."""
        self._cut: Cut | None = None
        self._cut_index: int | None = None
        self.members_seen = 1
        """Instances in the last cut this instance was part of."""
        self.ever_joined = False
        """This instance has been part of a cut: if it drops out, the broker is failing."""

    def take(self, announcement: GatewayClaims) -> None:
        """An announcement read from the claims topic (this instance's own ones too)."""
        sent_s = announcement.sent_at.timestamp()
        history = self._announced.setdefault(announcement.instance_id, deque())
        if history and sent_s <= history[-1][0]:
            return  # a redelivery, or a clock that went back: keep what was counted
        history.append((sent_s, {claim.key: claim for claim in announcement.claims}))
        if self._cut is not None and sent_s <= self._cut.cut_s:
            self._cut = self._cut_index = None  # arrived later than assumed: recompute

    def cut_at(self, now_s: float) -> Cut | None:
        """The cut at ``now_s``, or None while this instance's announcements are not in it."""
        index = math.floor((now_s - self.delay_s) / self.period_s)
        if index == self._cut_index:
            return self._cut
        cut_s = index * self.period_s
        own: tuple[float, dict[str, SubjectClaim]] | None = None
        others: list[dict[str, SubjectClaim]] = []
        for instance_id, history in list(self._announced.items()):
            while len(history) > 1 and history[1][0] <= cut_s:
                history.popleft()
            if not history or history[0][0] > cut_s:
                continue
            sent_s, claims = history[0]
            if sent_s <= cut_s - self.ttl_s:
                if len(history) == 1 and sent_s <= now_s - 2 * self.ttl_s:
                    del self._announced[instance_id]  # long gone
                continue
            if instance_id == self.instance_id:
                own = (sent_s, claims)
            else:
                others.append(claims)
        self._cut_index = index
        self._cut = None if own is None else Cut(cut_s, own[0], [own[1], *others])
        if self._cut is not None:
            self.members_seen = len(self._cut.members)
            self.ever_joined = True
        return self._cut
