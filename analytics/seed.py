"""A realistic synthetic lake, for demos, tests and benchmarks: ``tollgate seed-lake``.

``seed_lake`` writes ``events`` priced events over ``days`` days into a lake directory,
laid out as the sink lays it out, plus the budget states and alerts the stream would have
published for them, and a judge's evaluations of a sample of the answers
(``analytics.seed_evaluations``: one model hallucinates noticeably more).
Tenants of Zipf-like sizes with teams, users and keys call models of
OpenAI, Azure OpenAI and Anthropic, priced with the real catalog; traffic follows the day
and the week; a few percent of calls fail or are refused. Incidents are planted for the
dashboard to find: one key's expensive hour (a cost anomaly), a new key that spends fast
for six hours (a new spender), and a provider outage (a burst of upstream errors and timeouts).

It is fast and bounded: a day at a time, at most ``chunk_events`` rows in memory, every
column computed by numpy for the whole chunk; files are named ``seed-<seed>-<n>.parquet``,
a name the sink never writes, and seeding again with the same seed replaces them.
The same arguments always write the same lake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

from analytics.seed_evaluations import seed_evaluations
from analytics.seed_events import DAY_US, Chunk, Outage, SeedPricing, build_chunk, usd
from analytics.seed_history import (
    HOUR_US,
    Tracker,
    budget_history,
    new_spender_alert,
    spike_alert,
)
from analytics.seed_plan import INCIDENT_KINDS, Incident, Select, budget_plans, plan_incidents
from analytics.seed_world import World, build_world, day_weight, hour_weights
from tollgate.contract import Alert, BudgetState, Dimension
from tollgate.lake import (
    ALERTS,
    BUDGET_STATE,
    EVALUATIONS,
    PRICED,
    alerts_to_table,
    partition_date,
    partition_dir,
    states_to_table,
    write_parquet,
)
from tollgate.pricing.catalog import PriceCatalog
from tollgate.pricing.catalog_file import load_catalog
from tollgate.pricing.model_price import ANTHROPIC

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """What ``seed_lake`` wrote."""

    path: Path
    events: int
    start: datetime
    end: datetime
    files: int
    tenants: int
    teams: int
    api_keys: int
    users: int
    cost_usd: Decimal
    alerts: int
    budget_states: int
    incidents: tuple[str, ...]
    """One line per planted incident: what, who, when."""
    seconds: float


def seed_lake(
    path: Path,
    events: int,
    *,
    days: int = 30,
    end: datetime | None = None,
    seed: int = 0,
    tenants: int = 8,
    incidents: int = 3,
    catalog: PriceCatalog | None = None,
    chunk_events: int = 500_000,
) -> SeedSummary:
    """Write ``events`` priced events ending in ``[end - days, end)`` into the lake at
    ``path``, with budget states and alerts to match.

    ``end`` defaults to the start of the current UTC hour. ``incidents`` cycles through a
    spend spike, a new key, and an outage. ``catalog`` prices the calls (the shipped one
    by default).
    """
    began = time.perf_counter()
    if events < 0:
        raise ValueError(f"events must be 0 or more, got {events}")
    if not 1 <= days <= 3660:
        raise ValueError(f"days must be 1 to 3660, got {days}")
    if not 1 <= tenants <= 1000:
        raise ValueError(f"tenants must be 1 to 1000, got {tenants}")
    if not 0 <= incidents <= 30:
        raise ValueError(f"incidents must be 0 to 30, got {incidents}")
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be positive, got {chunk_events}")
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    elif end.tzinfo is None or end.utcoffset() is None:
        raise ValueError(f"end must be timezone-aware, got {end!r}")
    end_us = _micros(end)
    start_us = end_us - days * DAY_US
    rng = np.random.default_rng(seed)
    kinds = [INCIDENT_KINDS[i % 3] for i in range(incidents if events >= 10 else 0)]
    world = build_world(rng, tenants, new_keys=kinds.count("new_key"))
    pricing = SeedPricing(catalog or load_catalog())
    planted = plan_incidents(rng, world, kinds, events, start_us, end_us, pricing)
    outages = tuple(
        Outage(ANTHROPIC, incident.start_us, incident.end_us)
        for incident in planted
        if incident.kind == "outage"
    )
    plans = budget_plans(world, planted, start_us, end_us)
    trackers = [plan.tracker for plan in plans]
    incident_trackers = {
        id(incident): Tracker(start_us, end_us, _by_key(incident.key))
        for incident in planted
        if incident.kind != "outage"
    }
    trackers += incident_trackers.values()

    path = Path(path)
    _remove_earlier_seed(path, seed)
    days_list = _days(start_us, end_us)
    regular = events - sum(incident.events for incident in planted)
    per_day = rng.multinomial(regular, _day_shares(rng, days_list, start_us, end_us))
    incident_per_day = {
        id(incident): _spread(rng, incident, days_list) for incident in planted if incident.events
    }
    files = 0
    sequence = 0
    total_picos = 0
    for index, day_start in enumerate(days_list):
        low, high = max(start_us, day_start), min(end_us, day_start + DAY_US)
        count = int(per_day[index])
        pieces = max(1, -(-count // chunk_events))
        for piece in range(pieces):
            size = count // pieces + (1 if piece < count % pieces else 0)
            chunks: list[Chunk] = []
            if size:
                chunks.append(
                    _regular_chunk(world, pricing, rng, low, high, size, sequence, outages)
                )
                sequence += size
            for incident in planted if piece == 0 else ():
                wanted = int(incident_per_day.get(id(incident), np.zeros(len(days_list)))[index])
                if not wanted:
                    continue
                chunk = _incident_chunk(world, pricing, rng, incident, low, high, wanted, sequence)
                chunks.append(chunk)
                sequence += wanted
            if not chunks:
                continue
            for chunk in chunks:
                for tracker in trackers:
                    tracker.add(chunk)
                total_picos += int(sum(chunk.cost_pico.tolist()))
            table = chunks[0].table
            if len(chunks) > 1:  # an incident's calls join the day's: keep the file in time order
                table = pa.concat_tables([chunk.table for chunk in chunks]).sort_by("end_time")
            day = _instant(day_start).date()
            write_parquet(
                table, partition_dir(path, day, PRICED) / f"seed-{seed}-{piece:03d}.parquet"
            )
            files += 1

    history = budget_history(plans)
    alerts = list(history.alerts)
    for incident in planted:
        scope = {
            Dimension.TENANT: world.tenants[world.key_tenant[incident.key]],
            Dimension.API_KEY: world.keys[incident.key],
        }
        if incident.kind == "spike":
            alert = spike_alert(incident_trackers[id(incident)], scope, incident.start_us)
        elif incident.kind == "new_key":
            alert = new_spender_alert(incident_trackers[id(incident)], scope, incident.start_us)
        else:
            alert = None
        if alert is not None:
            alerts.append(alert)
    files += _write_by_day(path, ALERTS, alerts, seed)
    files += seed_evaluations(
        sorted(path.glob(f"{PRICED}/date=*/seed-{seed}-*.parquet")), path, seed
    )
    files += _write_by_day(path, BUDGET_STATE, history.states, seed)
    return SeedSummary(
        path=path,
        events=events,
        start=_instant(start_us),
        end=_instant(end_us),
        files=files,
        tenants=len(world.tenants),
        teams=len(world.teams),
        api_keys=len(world.keys),
        users=len(world.users),
        cost_usd=usd(total_picos),
        alerts=len(alerts),
        budget_states=len(history.states),
        incidents=tuple(incident.description for incident in planted),
        seconds=time.perf_counter() - began,
    )


def _regular_chunk(
    world: World,
    pricing: SeedPricing,
    rng: np.random.Generator,
    low: int,
    high: int,
    size: int,
    sequence: int,
    outages: tuple[Outage, ...],
) -> Chunk:
    end_us = _diurnal_times(rng, low, high, size)
    key = np.searchsorted(world.key_cumulative, rng.random(size), side="right")
    key = np.minimum(key, world.regular_keys - 1)
    model_share = _launched_share(world, pricing.launched(low // DAY_US))[world.key_team[key]]
    model = np.minimum(
        (rng.random(size)[:, None] >= model_share).sum(axis=1), len(model_share[0]) - 1
    )
    return build_chunk(
        world, pricing, rng, end_us, key, model, first_sequence=sequence, outages=outages
    )


def _launched_share(world: World, launched: np.ndarray) -> np.ndarray:
    """Each team's cumulative model shares, over the models already launched."""
    shares = np.diff(world.team_model_cumulative, axis=1, prepend=0.0) * launched
    return np.cumsum(shares, axis=1) / shares.sum(axis=1, keepdims=True)


def _incident_chunk(
    world: World,
    pricing: SeedPricing,
    rng: np.random.Generator,
    incident: Incident,
    low: int,
    high: int,
    size: int,
    sequence: int,
) -> Chunk:
    first, last = max(low, incident.start_us), min(high, incident.end_us)
    end_us = np.sort(rng.integers(first, last, size))
    return build_chunk(
        world,
        pricing,
        rng,
        end_us,
        np.full(size, incident.key),
        np.full(size, incident.model),
        first_sequence=sequence,
        token_scale=incident.token_scale,
    )


def _diurnal_times(rng: np.random.Generator, low: int, high: int, size: int) -> np.ndarray:
    """``size`` sorted instants in ``[low, high)`` (one UTC day at most), by hour weight."""
    day_start = low - low % DAY_US
    edges = day_start + np.arange(25, dtype=np.int64) * HOUR_US
    seg_low = np.maximum(edges[:-1], low)
    length = np.clip(np.minimum(edges[1:], high) - seg_low, 0, None)
    mass = hour_weights() * length
    cumulative = np.cumsum(mass) / mass.sum()
    segment = np.minimum(np.searchsorted(cumulative, rng.random(size), side="right"), 23)
    return np.sort(seg_low[segment] + (rng.random(size) * length[segment]).astype(np.int64))


def _day_shares(
    rng: np.random.Generator, days: list[int], start_us: int, end_us: int
) -> np.ndarray:
    """Each day's share of the events: weekday shape, slow growth, the hours it covers."""
    weights = hour_weights()
    shares = []
    for index, day_start in enumerate(days):
        edges = day_start + np.arange(25, dtype=np.int64) * HOUR_US
        covered = np.clip(np.minimum(edges[1:], end_us) - np.maximum(edges[:-1], start_us), 0, None)
        growth = 1 + 0.01 * index
        day = _instant(day_start).date()
        shares.append(day_weight(day, rng) * growth * float((weights * covered).sum()))
    total = sum(shares)
    return np.asarray(shares) / total


def _spread(rng: np.random.Generator, incident: Incident, days: list[int]) -> np.ndarray:
    """An incident's events per day, in proportion to how much of it each day holds."""
    overlap = np.asarray(
        [max(0, min(incident.end_us, day + DAY_US) - max(incident.start_us, day)) for day in days],
        dtype=np.float64,
    )
    return rng.multinomial(incident.events, overlap / overlap.sum())


def _days(start_us: int, end_us: int) -> list[int]:
    first = start_us - start_us % DAY_US
    return list(range(first, end_us, DAY_US))


def _by_key(key: int) -> Select:
    return lambda chunk: chunk.key == key


def _write_by_day(
    path: Path, sub_lake: str, records: list[Alert] | list[BudgetState], seed: int
) -> int:
    by_day: dict[date, list] = {}
    for record in records:
        instant = record.time if isinstance(record, Alert) else record.as_of_time
        by_day.setdefault(partition_date(instant), []).append(record)
    to_table = alerts_to_table if sub_lake == ALERTS else states_to_table
    for day, rows in by_day.items():
        write_parquet(
            to_table(rows), partition_dir(path, day, sub_lake) / f"seed-{seed}-000.parquet"
        )
    return len(by_day)


def _remove_earlier_seed(path: Path, seed: int) -> None:
    for sub_lake in (PRICED, ALERTS, BUDGET_STATE, EVALUATIONS):
        for old in (path / sub_lake).glob(f"date=*/seed-{seed}-*.parquet"):
            old.unlink()


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
