"""What a synthetic lake is made to show: planted incidents, and budgets to watch.

Incidents sit in busy hours of the last two thirds of the range: one key's expensive
hour (a cost anomaly), a new key spending fast (a new spender), and an Anthropic outage
(errors and timeouts). Four budgets are laid over the traffic so that their states show
each status: a tenant's month ending in a warning, a team's day exceeded once, a team's
weekly tokens in a warning, and a tenant's month of Claude Opus exceeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from analytics.seed_events import DAY_US, Chunk, SeedPricing
from analytics.seed_history import HOUR_US, BudgetPlan, Tracker
from analytics.seed_world import BIG_MODELS, World, model_index
from tollgate.contract import BudgetAction, CalendarUnit, Dimension
from tollgate.pricing.model_price import ANTHROPIC

INCIDENT_KINDS = ("spike", "new_key", "outage")
Select = Callable[[Chunk], np.ndarray]
"""Picks a chunk's calls that count toward something."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Incident:
    kind: str
    start_us: int
    end_us: int
    key: int
    model: int
    events: int
    token_scale: float
    description: str


def plan_incidents(
    rng: np.random.Generator,
    world: World,
    kinds: list[str],
    events: int,
    start_us: int,
    end_us: int,
    pricing: SeedPricing,
) -> list[Incident]:
    """Incidents in busy hours of the last two thirds of the range, each in its own hour."""
    first_hour = -(-start_us // HOUR_US) * HOUR_US
    hours = np.arange(first_hour, end_us - HOUR_US + 1, HOUR_US)
    if len(hours) == 0:
        return []
    later = hours[hours >= start_us + (end_us - start_us) // 3]
    busy = later[np.isin((later // HOUR_US) % 24, np.arange(10, 18))]
    pool = busy if len(busy) >= len(kinds) else later if len(later) >= len(kinds) else hours
    picked = rng.choice(pool, size=len(kinds), replace=len(pool) < len(kinds))
    by_share = np.argsort(-np.diff(world.key_cumulative, prepend=0.0))
    planted = []
    new_key = world.regular_keys
    for kind, hour in zip(kinds, picked.tolist(), strict=True):
        launched = pricing.launched(hour // DAY_US)
        ready = [m for m in BIG_MODELS if launched[model_index(m)]] or list(BIG_MODELS)
        big = model_index(str(rng.choice(ready)))
        when = _instant(hour).strftime("%Y-%m-%d %H:%M UTC")
        if kind == "spike":
            key = int(by_share[min(int(rng.integers(1, 6)), len(by_share) - 1)])
            planted.append(
                Incident(kind, hour, hour + HOUR_US, key, big, max(1, events // 500), 5.0,
                          f"spend spike: key {world.keys[key]} of "
                          f"{world.tenants[world.key_tenant[key]]} for an hour from {when}")
            )  # fmt: skip
        elif kind == "new_key":
            key = new_key
            new_key += 1
            planted.append(
                Incident(kind, hour, min(hour + 6 * HOUR_US, end_us), key, big,
                          max(1, events // 250), 3.0,
                          f"new key {world.keys[key]} of {world.tenants[world.key_tenant[key]]} "
                          f"spending fast for 6 h from {when}")
            )  # fmt: skip
        else:
            planted.append(
                Incident(kind, hour, hour + 3 * HOUR_US // 4, 0, 0, 0, 1.0,
                          f"outage: {ANTHROPIC} calls fail for 45 min from {when}")
            )  # fmt: skip
    return planted


def budget_plans(
    world: World, planted: list[Incident], start_us: int, end_us: int
) -> list[BudgetPlan]:
    """The four budgets of the module docstring, over this world and its incidents."""
    by_share = np.argsort(-np.diff(world.key_cumulative, prepend=0.0))
    spike = next((i.key for i in planted if i.kind == "spike"), int(by_share[0]))
    fresh = next(
        (i.key for i in planted if i.kind == "new_key"), int(by_share[min(1, len(by_share) - 1)])
    )
    second_index = min(1, len(world.tenants) - 1)
    first, second = world.tenants[0], world.tenants[second_index]
    opus = np.asarray([model_index("claude-opus-4")])

    def tracker(select: Select) -> Tracker:
        return Tracker(start_us, end_us, select)

    def team_scope(key: int) -> dict[Dimension, str]:
        return {
            Dimension.TENANT: world.tenants[world.key_tenant[key]],
            Dimension.TEAM: world.teams[world.key_team[key]],
        }

    def in_team(key: int) -> Select:
        team = world.key_team[key]
        return lambda chunk: world.key_team[chunk.key] == team

    spike_team, fresh_team = team_scope(spike), team_scope(fresh)
    return [
        BudgetPlan(f"{first}-monthly", {Dimension.TENANT: first}, CalendarUnit.MONTH,
                   BudgetAction.ALERT, False, 0.72,
                   tracker(lambda chunk: world.key_tenant[chunk.key] == 0)),
        BudgetPlan(f"{spike_team[Dimension.TENANT]}-{spike_team[Dimension.TEAM]}-daily",
                   spike_team, CalendarUnit.DAY, BudgetAction.BLOCK, False, 0.0,
                   tracker(in_team(spike))),
        BudgetPlan(f"{fresh_team[Dimension.TENANT]}-{fresh_team[Dimension.TEAM]}-weekly-tokens",
                   fresh_team, CalendarUnit.WEEK, BudgetAction.BLOCK, True, 0.85,
                   tracker(in_team(fresh))),
        BudgetPlan(f"{second}-opus-monthly",
                   {Dimension.TENANT: second, Dimension.MODEL: "claude-opus-4"},
                   CalendarUnit.MONTH, BudgetAction.BLOCK, False, 1.25,
                   tracker(lambda chunk: (world.key_tenant[chunk.key] == second_index)
                           & np.isin(chunk.model, opus))),
    ]  # fmt: skip


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
