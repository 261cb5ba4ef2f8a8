"""What each gateway instance tells the others about the blocking budgets it spends.

Every instance publishes a ``GatewayClaims`` every few tenths of a second on the claims
topic and reads everyone's (its own included). From the same announcements every instance
computes the same split of each budget's free headroom, so N instances never admit more
between them than the budget has left (see ``gateway.budget_shares``).
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from tollgate.contract.record import Name, NonNegativeInt, Record, UtcDatetime


class SubjectClaim(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One instance's use of one budget subject (keyed by the budget state's key)."""

    key: str
    claimed_tokens: NonNegativeInt = 0
    """Reserved by calls in flight plus used by finished calls the stream has not counted."""
    claimed_usd: Decimal = Decimal(0)
    demand_tokens: NonNegativeInt = 0
    """Admitted in the last second plus waiting to be: what the instance wants next."""
    demand_usd: Decimal = Decimal(0)


class GatewayClaims(Record, tag=1, kw_only=True):
    """One instance's claims on every budget subject it is using, as of ``sent_at``.

    An announcement is complete: a subject it does not name is claimed by nothing.
    """

    instance_id: Name
    sent_at: UtcDatetime
    """The announcing instance's clock; instances agree on which announcements count by it."""
    claims: list[SubjectClaim] = []
