"""``tollgate seed-lake``: a synthetic lake that reads like the real one.

Checked from the files alone: the number of events, unique ids, costs that are the sum
of their parts and what the catalog charges, the partition layout, the traffic shape,
and the incidents, budget states and alerts planted to match the events.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.seed import seed_lake
from tollgate.lake import ALERTS, BUDGET_STATE, PRICED, table_to_priced
from tollgate.pricing.catalog_file import load_catalog

END = datetime(2026, 3, 2, tzinfo=UTC)
PARTS = [
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_creation_cost_usd",
    "output_cost_usd",
    "request_cost_usd",
]


def files(lake: Path, sub_lake: str = PRICED) -> list[Path]:
    return sorted((lake / sub_lake).glob("date=*/*.parquet"))


def read(lake: Path, sub_lake: str = PRICED) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in files(lake, sub_lake)])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeded")
    seed_lake(path, 20_000, days=14, end=END, seed=3, tenants=6)
    return path


def test_seed_lake_command_writes_the_events_asked_for(tmp_path: Path) -> None:
    out = tmp_path / "lake"
    result = subprocess.run(
        [sys.executable, "-m", "tollgate.cli", "seed-lake", "--events", "3000", "--days", "3",
         "--out", str(out), "--seed", "5"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert "wrote 3,000 events" in result.stdout
    table = read(out)
    assert table.num_rows == 3000
    assert len(set(table.column("event_id").to_pylist())) == 3000
    assert all(path.name.startswith("seed-5-") for path in files(out))
    for path in files(out):
        day = path.parent.name.removeprefix("date=")
        ends = pq.read_table(path, columns=["end_time"]).column("end_time").to_pylist()
        assert {end.astimezone(UTC).date().isoformat() for end in ends} == {day}
    rows = table.select(["cost_usd", *PARTS]).to_pylist()
    assert all(row["cost_usd"] == sum(row[p] for p in PARTS) for row in rows)


def test_seeded_events_are_contract_events_priced_by_the_catalog(seeded: Path) -> None:
    catalog = load_catalog()
    events = table_to_priced(read(seeded))  # validates every field as the contract says
    assert len(events) == 20_000
    for event in events[::7]:
        repriced = catalog.price(event)
        assert (event.price_version, event.price_fallback) == (
            repriced.price_version,
            repriced.price_fallback,
        )
        assert [getattr(event, p) for p in [*PARTS, "cost_usd"]] == [
            getattr(repriced, p) for p in [*PARTS, "cost_usd"]
        ]
    assert not any(event.price_fallback for event in events)
    assert len({event.event_id for event in events}) == len(events)


def test_traffic_follows_the_day_and_the_week(seeded: Path) -> None:
    ends = pd.Series(read(seeded).column("end_time").to_pandas())
    hours = ends.dt.hour.value_counts()
    assert hours[[13, 14, 15, 16]].sum() > 2.5 * hours[[1, 2, 3, 4]].sum()
    per_day = ends.dt.floor("D").value_counts()
    weekend = per_day[per_day.index.day_of_week >= 5].mean()
    weekday = per_day[per_day.index.day_of_week < 5].mean()
    assert weekday > 1.8 * weekend


def test_the_mix_has_providers_errors_streams_and_cache_reads(seeded: Path) -> None:
    rows = read(seeded).to_pandas()
    assert set(rows.provider) == {"openai", "azure.ai.openai", "anthropic"}
    failed = rows[rows.status != "ok"]
    assert 0.02 < len(failed) / len(rows) < 0.1
    assert (failed[failed.status.str.startswith("rejected")].input_tokens == 0).all()
    assert 0.3 < rows.streamed.mean() < 0.8
    assert (rows.cache_read_input_tokens > 0).mean() > 0.1
    assert rows.team.notna().all()
    assert rows.user.nunique() > 20


def test_incidents_leave_their_traces_in_events_and_alerts(seeded: Path) -> None:
    alerts = read(seeded, ALERTS).to_pandas()
    assert {"cost_anomaly", "new_spender", "budget_threshold"} <= set(alerts.kind)
    rows = read(seeded).to_pandas()
    (anomaly,) = alerts[alerts.kind == "cost_anomaly"].itertuples()
    key = dict(anomaly.scope)["api_key_id"]
    hour = rows[(rows.api_key_id == key) & (rows.end_time >= anomaly.since)
                & (rows.end_time < anomaly.time)]  # fmt: skip
    assert sum(hour.cost_usd, Decimal(0)) == anomaly.actual_usd
    assert anomaly.actual_usd > 5 * anomaly.expected_usd
    (newcomer,) = alerts[alerts.kind == "new_spender"].itertuples()
    fresh = rows[rows.api_key_id == dict(newcomer.scope)["api_key_id"]]
    assert fresh.end_time.min() >= newcomer.since
    anthropic = rows[rows.provider == "anthropic"].set_index("end_time").sort_index()
    failing = anthropic.status.isin(["upstream_error", "timeout"])
    worst = failing.rolling("45min").mean().max()
    assert worst > 0.95


def test_budget_states_agree_with_the_events(seeded: Path) -> None:
    rows = read(seeded).to_pandas()
    states = read(seeded, BUDGET_STATE).to_pandas()
    assert {"ok", "warning", "exceeded"} <= set(states.status)
    latest = states.sort_values("as_of_time").groupby(["budget_id", "window_start"]).tail(1)
    for state in latest.itertuples():
        picked = rows[(rows.end_time >= state.window_start) & (rows.end_time < state.as_of_time)]
        for dimension, value in state.scope:
            picked = picked[picked[dimension] == value]
        assert sum(picked.cost_usd, Decimal(0)) == state.spent_usd
        assert int((picked.input_tokens + picked.output_tokens).sum()) == state.spent_tokens


def test_seeding_again_gives_the_same_lake_in_place(tmp_path: Path) -> None:
    first = seed_lake(tmp_path / "a", 2000, days=2, end=END, seed=9)
    again = seed_lake(tmp_path / "a", 2000, days=2, end=END, seed=9)
    twin = seed_lake(tmp_path / "b", 2000, days=2, end=END, seed=9)
    assert read(tmp_path / "a").num_rows == 2000
    assert read(tmp_path / "a").equals(read(tmp_path / "b"))
    assert first.cost_usd == again.cost_usd == twin.cost_usd
    assert first.start == END - timedelta(days=2)
