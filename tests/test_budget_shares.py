"""The bound the instances' shares promise, attacked by simulation.

Several ``BudgetBook``s, each with its own ``ShareView``, exchange announcements through a
simulated broker that delivers each one to every instance after a random delay below the
share delay. Calls arrive in bursts that move from instance to instance, last a random
while and use up to what they reserved. At every step the holdings of all instances
together must fit the limit: ``Σ h ≤ L`` (no stream here, so nothing else is spent).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.budget_book import BudgetBook, Reservation
from gateway.budget_shares import ShareView
from gateway.errors import BudgetExceeded
from tollgate.contract import (
    BudgetDefinition,
    BudgetWindow,
    Dimension,
    GatewayClaims,
    WindowKind,
)

LIMIT = 20_000
PERIOD_S, DELAY_S = 0.1, 0.4
START = datetime(2026, 3, 1, 12, tzinfo=UTC)
CALL = {dimension: None for dimension in Dimension} | {Dimension.TENANT: "acme"}


def definition() -> BudgetDefinition:
    return BudgetDefinition(
        budget_id="acme-tokens",
        scope={Dimension.TENANT: "acme"},
        window=BudgetWindow(kind=WindowKind.ROLLING, size_s=3600),
        limit_tokens=LIMIT,
    )


@dataclass
class Instance:
    name: str
    book: BudgetBook
    calls: list[tuple[float, Reservation, int]] = field(default_factory=list)
    """(ends at, reservation, tokens it will use)."""

    @property
    def holds(self) -> int:
        return sum(ledger.claimed_tokens for ledger in self.book._ledgers.values())


def world(count: int) -> list[Instance]:
    instances = []
    for index in range(count):
        name = f"gw-{index}"
        book = BudgetBook(
            fail_open=True,
            definitions=[definition()],
            shares=ShareView(name, period_s=PERIOD_S, delay_s=DELAY_S, ttl_s=10),
        )
        book.mark_caught_up()
        instances.append(Instance(name, book))
    return instances


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [2, 3])
def test_instances_never_hold_more_than_the_limit_together(seed: int, count: int) -> None:
    rng = random.Random(seed)
    instances = world(count)
    in_transit: list[tuple[float, GatewayClaims]] = []
    admitted = refused = 0
    step_s = 0.01
    for step in range(int(8 / step_s)):
        now_s = step * step_s
        now = START + timedelta(seconds=now_s)
        # The broker: each announcement reaches every instance within the share delay.
        arrived = [a for at_s, a in in_transit if at_s <= now_s]
        in_transit = [(at_s, a) for at_s, a in in_transit if at_s > now_s]
        for announcement in arrived:
            for instance in instances:
                instance.book.shares.take(announcement, time.monotonic())  # type: ignore[union-attr]
        if step % int(PERIOD_S / step_s) == 0:
            for instance in instances:
                announcement = instance.book.announcement(instance.name, now)
                in_transit.append((now_s + rng.uniform(0.0, DELAY_S * 0.9), announcement))
        # Calls: bursts wander from instance to instance; some are long, some short.
        busy = instances[(step // 150 + seed) % count]
        for instance in instances:
            rate = 0.6 if instance is busy else 0.15
            while rng.random() < rate:
                rate /= 2
                estimate = rng.randint(200, 1_500)
                try:
                    reservation, _ = instance.book.admit(CALL, estimate, Decimal(0), now)
                except BudgetExceeded:
                    refused += 1
                    continue
                admitted += 1
                used = rng.randint(estimate // 2, estimate)
                instance.calls.append((now_s + rng.uniform(0.05, 1.5), reservation, used))
            for _ends_s, reservation, used in [c for c in instance.calls if c[0] <= now_s]:
                reservation.finish(used, Decimal(0), now)
            instance.calls = [c for c in instance.calls if c[0] > now_s]
        held = sum(instance.holds for instance in instances)
        assert held <= LIMIT, f"step {step}: the instances hold {held} of {LIMIT}"
    assert admitted > 10
    assert refused > 0  # the limit was reached: the test tried


def test_an_idle_pair_splits_a_fresh_budget_evenly() -> None:
    instances = world(2)
    now = START
    for _ in range(10):  # both announce, and each hears both, for a second
        announcements = [i.book.announcement(i.name, now) for i in instances]
        for instance in instances:
            for announcement in announcements:
                instance.book.shares.take(announcement, time.monotonic())  # type: ignore[union-attr]
        now += timedelta(seconds=PERIOD_S)
    first, _second = instances

    taken = 0
    while True:
        try:
            first.book.admit(CALL, 1_000, Decimal(0), now)
        except BudgetExceeded:
            break
        taken += 1

    assert taken == LIMIT // 2 // 1_000
