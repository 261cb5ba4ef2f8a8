"""The analytics Python API over a real lake: every query checked against pandas.

The world is a synthetic lake (``seed_lake``) plus hand-written rows for the edge cases.
Expected answers are computed in pandas from the Parquet files read independently with
pyarrow; counts and tokens must match exactly, money to the last of its 12 decimals.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics import Lake, QueryError, queries
from analytics.seed import seed_lake
from analytics.time_buckets import bucket_plan
from tests.factories import make_priced, make_state
from tollgate.contract import Dimension as BudgetDimension
from tollgate.lake import (
    BUDGET_STATE,
    PRICED,
    partition_date,
    partition_dir,
    priced_to_table,
    states_to_table,
    write_parquet,
)
from tollgate.lake_names import RangeName
from tollgate.pricing.catalog_file import load_catalog

END = datetime(2026, 4, 2, tzinfo=UTC)
DAYS = 12
START = END - timedelta(days=DAYS)
FALL_BACK = datetime(2026, 10, 25, tzinfo=UTC)
"""Berlin's clocks go back at 01:00 UTC this day: 02:00-03:00 local happens twice."""
FAR_PAST = datetime.fromisoformat("0001-01-01T00:00:00+14:00")
FAR_FUTURE = datetime.fromisoformat("9999-12-31T23:59:59-14:00")
"""Instants with no UTC date: converting them overflows."""
LATE = END - timedelta(hours=1)
"""An instant in the lake's last hour: the budget windows open then are the newest."""
TINY = Decimal("0.000000000001")
INJECTION = "x' OR 1=1 --"


def edge_events() -> list[Any]:
    """Rows the generator never writes: a model only in the response, no team, costs in
    the 12th decimal, the repeated hour of a DST fall-back, and 1971 (an odd offset)."""
    at = START + timedelta(hours=1)
    edge = {"tenant": "edge-co", "team": "ops", "api_key_id": "key_edge"}
    return [
        make_priced(time=at, request_model=None, response_model="gpt-4o-2024-08-06", **edge),
        make_priced(time=at + timedelta(hours=1), **{**edge, "team": None}),
        make_priced(
            time=at + timedelta(hours=2),
            input_cost_usd=TINY,
            cache_read_cost_usd=TINY * 2,
            output_cost_usd=TINY * 3,
            **edge,
        ),
        make_priced(time=FALL_BACK + timedelta(minutes=30), **edge),
        make_priced(time=FALL_BACK + timedelta(minutes=90), **edge),
        make_priced(time=datetime(1971, 6, 1, 23, 50, tzinfo=UTC), **edge),
        make_priced(time=datetime(1971, 6, 2, 0, 20, tzinfo=UTC), **edge),
    ]


def write_events(lake: Path, events: list[Any], name: str) -> None:
    by_day: dict[Any, list[Any]] = {}
    for event in events:
        by_day.setdefault(partition_date(event.end_time), []).append(event)
    for day, rows in by_day.items():
        write_parquet(priced_to_table(rows), partition_dir(lake, day) / f"{name}.parquet")


def read_sub_lake(lake: Path, sub_lake: str) -> pd.DataFrame:
    """The rows of every finished file, read without DuckDB; money as exact Decimals."""
    files = sorted((lake / sub_lake).glob("date=*/*.parquet"))
    tables = [pq.read_table(path) for path in files]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lake")
    seed_lake(path, 30_000, days=DAYS, end=END, seed=11, tenants=5)
    write_events(path, edge_events(), "edge")
    return path


@pytest.fixture(scope="module")
def lake(lake_dir: Path) -> Iterator[Lake]:
    with Lake(lake_dir) as opened:
        yield opened


@pytest.fixture(scope="module")
def priced(lake_dir: Path) -> pd.DataFrame:
    rows = read_sub_lake(lake_dir, PRICED)
    rows["model"] = rows.request_model.where(rows.request_model.notna(), rows.response_model)
    rows["total_tokens"] = rows.input_tokens + rows.output_tokens
    return rows


# -- expected answers, in pandas -------------------------------------------------------------


def in_range(rows: pd.DataFrame, start: datetime, end: datetime, **filters: list[str]):
    picked = rows[(rows.end_time >= start) & (rows.end_time < end)]
    for column, values in filters.items():
        picked = picked[picked[column].isin(values)]
    return picked


def local_bucket(end_time: pd.Series, tz: str, granularity: str) -> pd.Series:
    local = end_time.dt.tz_convert(tz).dt.tz_localize(None)
    if granularity == "hour":
        return local.dt.floor("h")
    day = local.dt.floor("D")
    if granularity == "day":
        return day
    if granularity == "week":
        return day - pd.to_timedelta(day.dt.day_of_week, unit="D")
    return local.dt.to_period("M").dt.start_time


def key(value: Any) -> Any:
    """Group keys as Python values, missing ones as None (pandas says NaN)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    return value


def expected_groups(rows: pd.DataFrame, keys: list[str]) -> dict[tuple, dict[str, Any]]:
    """requests, token sums and exact cost per group of ``keys``."""
    found: dict[tuple, dict[str, Any]] = {}
    groups = rows.groupby(keys, dropna=False, sort=False) if keys else [((), rows)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        found[tuple(key(v) for v in values)] = {
            "requests": len(group),
            **{c: int(group[c].sum()) for c in TOKENS},
            "cost_usd": sum(group.cost_usd, Decimal(0)),
        }
    return found


TOKENS = [
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
    "total_tokens",
]


def actual_groups(table: pa.Table, keys: list[str]) -> dict[tuple, dict[str, Any]]:
    found = {}
    for row in table.to_pylist():
        found[tuple(row[k] for k in keys)] = {k: v for k, v in row.items() if k not in keys}
    return found


# -- spend -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group_by", "granularity", "tz"),
    [
        ([], None, "UTC"),
        (["team"], "day", "UTC"),
        (["tenant", "model"], None, "UTC"),
        (["provider"], "hour", "Europe/Berlin"),  # spring forward on 2026-03-29
        (["status"], "day", "Asia/Kathmandu"),  # +05:45
        (["api_key_id"], "week", "America/New_York"),
        (["operation", "backend"], "month", "Pacific/Auckland"),
        (["user"], "day", "UTC"),
        (["tenant"], "hour", "UTC"),
    ],
)
def test_spend_matches_pandas(
    lake: Lake, priced: pd.DataFrame, group_by: list[str], granularity: str | None, tz: str
) -> None:
    start, end = START + timedelta(hours=7), END - timedelta(hours=5)
    table = lake.arrow(queries.spend(start, end, group_by=group_by, granularity=granularity, tz=tz))
    rows = in_range(priced, start, end)
    keys = list(group_by)
    if granularity:
        rows = rows.assign(bucket=local_bucket(rows.end_time, tz, granularity))
        keys = ["bucket", *keys]
    expected = expected_groups(rows, keys)
    assert actual_groups(table, keys) == expected
    assert table.column_names[: len(keys)] == keys
    assert len(expected) > 1 or not keys


def test_spend_without_groups_is_one_row_of_totals(lake: Lake, priced: pd.DataFrame) -> None:
    table = lake.arrow(queries.spend(START, END))
    (row,) = table.to_pylist()
    assert row["requests"] == len(in_range(priced, START, END))
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"]


def test_the_repeated_hour_of_a_fall_back_is_one_local_bucket(lake: Lake) -> None:
    query = queries.spend(
        FALL_BACK,
        FALL_BACK + timedelta(hours=3),
        granularity="hour",
        tz="Europe/Berlin",
        filters={"tenant": ["edge-co"]},
    )
    rows = lake.arrow(query).to_pylist()
    assert [(r["bucket"], r["requests"]) for r in rows] == [(datetime(2026, 10, 25, 2), 2)]


def test_an_odd_historic_offset_buckets_each_row(lake: Lake, priced: pd.DataFrame) -> None:
    start, end = datetime(1971, 6, 1, tzinfo=UTC), datetime(1971, 6, 3, tzinfo=UTC)
    tz = "Africa/Monrovia"  # UTC-00:44:30 until 1972
    assert "timezone(" in bucket_plan(tz, start, end, queries.Granularity.DAY).slot_sql
    assert bucket_plan("UTC", START, END, queries.Granularity.DAY).slot_sql == "date"
    table = lake.arrow(queries.spend(start, end, granularity="day", tz=tz))
    rows = in_range(priced, start, end)
    rows = rows.assign(bucket=local_bucket(rows.end_time, tz, "day"))
    assert actual_groups(table, ["bucket"]) == expected_groups(rows, ["bucket"])
    assert len(table) == 1  # 23:50 and 00:20 UTC are the same Monrovia day


def test_model_is_the_response_model_when_the_request_named_none(lake: Lake) -> None:
    query = queries.spend(START, END, group_by=["model"], filters={"tenant": ["edge-co"]})
    models = {row["model"]: row["requests"] for row in lake.arrow(query).to_pylist()}
    assert models == {"gpt-4o-2024-08-06": 1, "gpt-4o-mini": 2}


def test_filters_are_or_within_and_across_dimensions(lake: Lake, priced: pd.DataFrame) -> None:
    teams = sorted(priced.team.dropna().unique())[:2]
    filters = {"team": teams, "provider": ["openai", "anthropic"], "status": ["ok"]}
    table = lake.arrow(queries.spend(START, END, group_by=["team", "provider"], filters=filters))
    rows = in_range(priced, START, END, **filters)
    assert actual_groups(table, ["team", "provider"]) == expected_groups(rows, ["team", "provider"])
    assert {r["team"] for r in table.to_pylist()} == set(teams)


def test_tenant_scope_cannot_be_widened_by_a_filter(lake: Lake, priced: pd.DataFrame) -> None:
    tenants = priced.tenant.value_counts().index
    mine, theirs = tenants[0], tenants[1]
    other = queries.spend(START, END, filters={"tenant": [theirs]}, tenant_scope=mine)
    assert lake.arrow(other).to_pylist()[0]["requests"] == 0
    both = queries.spend(START, END, group_by=["tenant"], filters={"tenant": [mine, theirs]},
                         tenant_scope=mine)  # fmt: skip
    assert [r["tenant"] for r in lake.arrow(both).to_pylist()] == [mine]
    for query in (
        queries.top_spenders(START, END, by="tenant", tenant_scope=mine),
        queries.errors(START, END, group_by=["tenant"], tenant_scope=mine),
        queries.recent_alerts(START, END, tenant_scope=mine),
        queries.budget_status(at=LATE, tenant_scope=mine),
    ):
        assert set(lake.arrow(query).column("tenant").to_pylist()) <= {mine}


def test_injected_sql_in_values_is_only_a_value(lake: Lake) -> None:
    for query in (
        queries.spend(START, END, filters={"team": [INJECTION]}),
        queries.spend(START, END, tenant_scope=INJECTION),
    ):
        assert lake.arrow(query).to_pylist()[0]["requests"] == 0
    assert lake.arrow(queries.budget_status(at=LATE, budget_id=INJECTION)).num_rows == 0
    assert lake.arrow(queries.budget_burn(INJECTION, INJECTION, at=END)).num_rows == 0


# -- the other questions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("by", "measure", "n"),
    [("api_key_id", "cost_usd", 5), ("team", "total_tokens", 50), ("model", "requests", 3)],
)
def test_top_spenders_match_pandas(
    lake: Lake, priced: pd.DataFrame, by: str, measure: str, n: int
) -> None:
    table = lake.arrow(queries.top_spenders(START, END, by=by, n=n, measure=measure))
    rows = in_range(priced, START, END)
    groups = expected_groups(rows, [by])
    total = sum(g["cost_usd"] for g in groups.values())
    ranked = sorted(groups.items(), key=lambda item: (item[0][0] is None, item[0][0] or ""))
    ranked.sort(key=lambda item: item[1][measure], reverse=True)
    expected = [
        (rank, name, g["requests"], g["total_tokens"], g["cost_usd"])
        for rank, ((name,), g) in enumerate(ranked[:n], start=1)
    ]
    got = table.to_pylist()
    assert [(r["rank"], r[by], r["requests"], r["total_tokens"], r["cost_usd"]) for r in got] == (
        expected
    )
    for row in got:
        assert row["share"] == pytest.approx(float(row["cost_usd"] / total), rel=1e-9)


def test_unit_costs_match_pandas(lake: Lake, priced: pd.DataFrame) -> None:
    table = lake.arrow(queries.unit_costs(START, END, group_by=["provider", "status"]))
    groups = expected_groups(in_range(priced, START, END), ["provider", "status"])
    got = actual_groups(table, ["provider", "status"])
    assert got.keys() == groups.keys()
    for group, expected in groups.items():
        row = got[group]
        assert (row["requests"], row["total_tokens"], row["cost_usd"]) == (
            expected["requests"],
            expected["total_tokens"],
            expected["cost_usd"],
        )
        assert row["cost_per_request"] == pytest.approx(
            float(expected["cost_usd"]) / expected["requests"], rel=1e-9
        )
        if expected["total_tokens"]:
            assert row["cost_per_1k_tokens"] == pytest.approx(
                float(expected["cost_usd"]) * 1000 / expected["total_tokens"], rel=1e-9
            )
        else:
            assert row["cost_per_1k_tokens"] is None


def test_cache_savings_match_a_hand_computation_from_the_catalog(
    lake: Lake, priced: pd.DataFrame
) -> None:
    catalog = load_catalog()
    input_rate = {price.version: price.per_token[0] for price in catalog.prices}
    table = lake.arrow(queries.cache_savings(START, END, group_by=["model"]))
    rows = in_range(priced, START, END)
    expected: dict[Any, dict[str, Any]] = {}
    for row in rows.itertuples():
        group = expected.setdefault(
            key(row.model), {"input": 0, "read": 0, "read_cost": Decimal(0), "uncached": Decimal(0),
                             "write_cost": Decimal(0), "write_uncached": Decimal(0)},
        )  # fmt: skip
        group["input"] += row.input_tokens
        group["read"] += row.cache_read_input_tokens
        group["read_cost"] += row.cache_read_cost_usd
        group["write_cost"] += row.cache_creation_cost_usd
        rate = input_rate.get(row.price_version)
        group["uncached"] += (
            row.cache_read_cost_usd if rate is None else rate * row.cache_read_input_tokens
        )
        group["write_uncached"] += (
            row.cache_creation_cost_usd if rate is None else rate * row.cache_creation_input_tokens
        )
    got = {row["model"]: row for row in table.to_pylist()}
    assert got.keys() == expected.keys()
    for model, group in expected.items():
        row = got[model]
        assert row["input_tokens"] == group["input"]
        assert row["cache_read_input_tokens"] == group["read"]
        assert row["cache_read_cost_usd"] == group["read_cost"]
        assert row["uncached_cost_usd"] == group["uncached"]
        assert row["savings_usd"] == group["uncached"] - group["read_cost"]
        premium = group["write_cost"] - group["write_uncached"]
        assert row["cache_write_premium_usd"] == premium
        assert row["net_savings_usd"] == row["savings_usd"] - premium
    assert sum(row["savings_usd"] for row in got.values()) > 0
    premiums = [row["cache_write_premium_usd"] for row in got.values()]
    assert any(premium > 0 for premium in premiums), "the seeded lake writes caches"
    net = sum(row["net_savings_usd"] for row in got.values())
    assert net < sum(row["savings_usd"] for row in got.values())


def test_errors_match_pandas(lake: Lake, priced: pd.DataFrame) -> None:
    table = lake.arrow(queries.errors(START, END, group_by=["provider"]))
    rows = in_range(priced, START, END)
    expected = expected_groups(rows[rows.status != "ok"], ["status", "provider"])
    got = actual_groups(table, ["status", "provider"])
    assert {g: (r["requests"], r["total_tokens"], r["cost_usd"]) for g, r in got.items()} == {
        g: (e["requests"], e["total_tokens"], e["cost_usd"]) for g, e in expected.items()
    }
    for group, row in got.items():
        assert row["share_of_requests"] == pytest.approx(expected[group]["requests"] / len(rows))
    assert {"upstream_error", "timeout"} <= {status for status, _ in got}


def test_recent_alerts_are_the_range_newest_first(lake: Lake, lake_dir: Path) -> None:
    alerts = read_sub_lake(lake_dir, "alerts")
    start, end = END - timedelta(days=6), END
    wanted = alerts[(alerts.time >= start) & (alerts.time < end)]
    expected = wanted.sort_values(["time", "alert_id"], ascending=[False, True]).alert_id
    got = lake.arrow(queries.recent_alerts(start, end))
    assert got.column("alert_id").to_pylist() == list(expected)
    kinds = lake.arrow(queries.recent_alerts(START, END, kinds=["cost_anomaly", "new_spender"]))
    assert sorted(kinds.column("kind").to_pylist()) == ["cost_anomaly", "new_spender"]


@pytest.mark.parametrize("at", [START + timedelta(days=5, hours=7), LATE])
def test_budget_status_is_each_subjects_latest_state_in_its_window_at_the_instant(
    lake: Lake, lake_dir: Path, at: datetime
) -> None:
    states = read_sub_lake(lake_dir, BUDGET_STATE)
    open_then = states[(states.window_start <= at) & (at < states.window_end)]
    latest = open_then.sort_values("as_of_time").groupby(["budget_id", "subject"]).tail(1)
    assert len(latest) > 1
    got = lake.arrow(queries.budget_status(at=at)).to_pylist()
    assert [(r["budget_id"], r["subject"], r["spent_usd"], r["as_of_time"]) for r in got] == [
        (r.budget_id, r.subject, r.spent_usd, r.as_of_time.to_pydatetime())
        for r in latest.sort_values(["budget_id", "subject"]).itertuples()
    ]
    in_order = latest.sort_values(["budget_id", "subject"]).itertuples()
    for row, state in zip(got, in_order, strict=True):
        used = [float(state.spent_usd / state.limit_usd)] if pd.notna(state.limit_usd) else []
        used += [state.spent_tokens / state.limit_tokens] if pd.notna(state.limit_tokens) else []
        assert row["used_pct"] == pytest.approx(100 * max(used))
    for status in ("ok", "warning", "exceeded"):
        query = queries.budget_status(at=at, status=status)
        picked = lake.arrow(query).column("subject").to_pylist()
        assert picked == list(
            latest[latest.status == status].sort_values(["budget_id", "subject"]).subject
        )


def test_budget_status_leaves_out_windows_that_have_ended(lake: Lake) -> None:
    ended = lake.arrow(queries.budget_status(at=END + timedelta(days=40)))
    assert ended.num_rows == 0, "every window of the seeded lake ended by then"
    assert lake.arrow(queries.budget_status()).num_rows == 0, "nor is one open now"


# -- budget burn-down, on a hand-built budget ------------------------------------------------

DAY = datetime(2026, 11, 2, tzinfo=UTC)


@pytest.fixture
def budget_lake(tmp_path: Path) -> Path:
    scope = {BudgetDimension.TENANT: "acme", BudgetDimension.TEAM: "search"}

    def call(end: datetime, usd: str, **overrides: Any) -> Any:
        start = end - timedelta(milliseconds=850)
        return make_priced(time=start, input_cost_usd=Decimal(usd), cache_read_cost_usd=Decimal(0),
                           output_cost_usd=Decimal(0), **overrides)  # fmt: skip

    write_events(
        tmp_path,
        [
            call(DAY - timedelta(minutes=5), "100"),  # the previous window
            call(DAY + timedelta(hours=1, minutes=10), "1"),
            call(DAY + timedelta(hours=5, minutes=20), "2"),
            call(DAY + timedelta(hours=5, minutes=40), "0.5", user="grace"),
            call(DAY + timedelta(hours=6), "7", team="other"),  # another subject
            call(DAY + timedelta(hours=9), "9", provider="anthropic", tenant="globex"),
            call(DAY + timedelta(hours=13), "50"),  # after `at`
        ],
        "calls",
    )
    states = [
        make_state(budget_id="search-daily", scope=scope, window_start=DAY - timedelta(days=1),
                   window_end=DAY, as_of_time=DAY - timedelta(minutes=1)),
        make_state(budget_id="search-daily", scope=scope, window_start=DAY,
                   window_end=DAY + timedelta(days=1), as_of_time=DAY + timedelta(hours=11),
                   limit_usd=Decimal(10)),
        make_state(budget_id="teams-daily", scope={**scope, BudgetDimension.TEAM: "other"},
                   window_start=DAY, window_end=DAY + timedelta(days=1), as_of_time=DAY),
        make_state(budget_id="teams-daily", scope=scope, window_start=DAY,
                   window_end=DAY + timedelta(days=1), as_of_time=DAY),
    ]  # fmt: skip
    for index, state in enumerate(states):
        path = partition_dir(tmp_path, partition_date(state.as_of_time), BUDGET_STATE)
        write_parquet(states_to_table([state]), path / f"state-{index}.parquet")
    return tmp_path


def test_budget_burn_adds_up_the_scope_and_forecasts_the_pace(budget_lake: Path) -> None:
    at = DAY + timedelta(hours=12)
    with Lake(budget_lake) as lake:
        rows = lake.arrow(queries.budget_burn("search-daily", at=at)).to_pylist()
    actual = [
        (r["bucket"], r["spent_usd"], r["spent_tokens"]) for r in rows if r["kind"] == "actual"
    ]
    naive = DAY.replace(tzinfo=None)
    spent = {1: Decimal(1), 5: Decimal("3.5")}
    running, expected = Decimal(0), []
    for hour in range(13):
        running = max(running, spent.get(hour, running))
        tokens = 0 if hour < 1 else 1500 if hour < 5 else 4500
        expected.append((naive + timedelta(hours=hour), running, tokens))
    assert actual == expected
    forecast = [r for r in rows if r["kind"] == "forecast"]
    assert [r["bucket"] for r in forecast] == [naive + timedelta(hours=h) for h in range(12, 24)]
    for hour, row in zip(range(12, 24), forecast, strict=True):
        assert float(row["spent_usd"]) == pytest.approx(3.5 * (hour + 1) / 12)
        assert row["spent_tokens"] == round(4500 * (hour + 1) / 12)
    assert {(r["limit_usd"], r["limit_tokens"]) for r in rows} == {(Decimal(10), None)}


def test_budget_burn_needs_a_subject_when_a_budget_has_several(budget_lake: Path) -> None:
    at = DAY + timedelta(hours=12)
    with Lake(budget_lake) as lake:
        with pytest.raises(QueryError, match="several subjects"):
            lake.frame(queries.budget_burn("teams-daily", at=at))
        one = lake.frame(queries.budget_burn("teams-daily", "tenant=acme,team=other", at=at))
        assert one[one.kind == "actual"].spent_usd.iloc[-1] == 7
        assert lake.frame(queries.budget_burn("search-daily", at=at + timedelta(days=1))).empty
        assert lake.frame(queries.budget_burn("search-daily", at=at, tenant_scope="globex")).empty


def test_budget_status_shows_each_subject_in_its_window_open_at_the_instant(
    budget_lake: Path,
) -> None:
    search, other = "tenant=acme,team=search", "tenant=acme,team=other"
    with Lake(budget_lake) as lake:

        def shown(at: datetime) -> list[tuple[str, str, datetime]]:
            rows = lake.arrow(queries.budget_status(at=at)).to_pylist()
            return [(r["budget_id"], r["subject"], r["window_end"]) for r in rows]

        assert shown(DAY - timedelta(minutes=30)) == [("search-daily", search, DAY)]
        tomorrow = DAY + timedelta(days=1)
        assert shown(DAY) == [
            ("search-daily", search, tomorrow),
            ("teams-daily", other, tomorrow),
            ("teams-daily", search, tomorrow),
        ]
        assert shown(tomorrow) == [], "every window ended at midnight"
        exceeded = queries.budget_status(at=DAY, status="exceeded", budget_id="search-daily")
        assert lake.arrow(exceeded).num_rows == 0


# -- the lake as files come and go -----------------------------------------------------------


def test_an_empty_lake_answers_with_nothing(tmp_path: Path) -> None:
    with Lake(tmp_path / "nothing-yet") as lake:
        (totals,) = lake.arrow(queries.spend(START, END)).to_pylist()
        assert (totals["requests"], totals["cost_usd"]) == (0, Decimal(0))
        for query in (
            queries.spend(START, END, group_by=["team"], granularity="day", tz="Europe/Paris"),
            queries.top_spenders(START, END, by="team"),
            queries.unit_costs(START, END, group_by=["model"]),
            queries.cache_savings(START, END, group_by=["model"]),
            queries.errors(START, END),
            queries.recent_alerts(START, END),
            queries.budget_status(),
            queries.budget_burn("any", at=END),
        ):
            assert lake.arrow(query).num_rows == 0
        assert lake.sql("SELECT count(*) AS n FROM usage").n[0] == 0


def test_files_written_after_opening_are_read_and_tmp_files_never(tmp_path: Path) -> None:
    at = START + timedelta(hours=3)
    with Lake(tmp_path) as lake:
        assert lake.arrow(queries.spend(START, END)).to_pylist()[0]["requests"] == 0
        write_events(tmp_path, [make_priced(time=at)], "first")
        assert lake.arrow(queries.spend(START, END)).to_pylist()[0]["requests"] == 1
        write_events(tmp_path, [make_priced(time=at + timedelta(days=2))], "second")
        table = priced_to_table([make_priced(time=at)])
        pq.write_table(table, partition_dir(tmp_path, at.date()) / "half.parquet.tmp")
        assert lake.arrow(queries.spend(START, END)).to_pylist()[0]["requests"] == 2


PRICED_TOPIC = "tollgate.priced.v1"


def write_range(lake: Path, name: RangeName, events: list[Any]) -> Path:
    """``events`` as the sink (or compaction) names them: offsets ``name.first`` onwards."""
    offsets = range(name.first, name.first + len(events))
    lineage = [(name.topic, name.partition, offset) for offset in offsets]
    directory = partition_dir(lake, partition_date(events[0].end_time))
    path = directory / name.file_name
    write_parquet(priced_to_table(events, lineage), path)
    return path


def small(first: int, last: int) -> RangeName:
    return RangeName(PRICED_TOPIC, 0, 0, first, last, 1_000 + first)


def compacted(first: int, last: int) -> RangeName:
    return RangeName(PRICED_TOPIC, 0, 0, first, last, compacted=True)


def test_a_compacted_file_and_the_small_files_it_covers_count_once(tmp_path: Path) -> None:
    at = START + timedelta(hours=3)
    events = [make_priced(time=at + timedelta(seconds=i)) for i in range(10)]
    smalls = [write_range(tmp_path, small(0, 5), events[:6])]
    smalls.append(write_range(tmp_path, small(6, 9), events[6:]))
    with Lake(tmp_path) as lake:

        def requests() -> int:
            rows = lake.sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage")
            assert rows.n[0] == rows.d[0], "a row was read twice"
            return lake.arrow(queries.spend(START, END)).to_pylist()[0]["requests"]

        assert requests() == 10
        # Compaction renamed its file into place; its deletes have not run yet.
        write_range(tmp_path, compacted(0, 9), events)
        assert requests() == 10
        assert len(list(smalls[0].parent.glob("*.parquet"))) == 3
        with Lake(tmp_path) as opened_now:
            assert opened_now.arrow(queries.spend(START, END)).to_pylist()[0]["requests"] == 10
        for path in smalls:
            path.unlink()
        assert requests() == 10
        later = make_priced(time=at + timedelta(minutes=5))
        write_range(tmp_path, small(10, 10), [later])
        assert requests() == 11


def test_a_partition_quiet_for_long_still_shows_each_file_written_or_deleted(
    tmp_path: Path,
) -> None:
    """Listings of a directory unchanged for a while are kept between queries: a change
    in it must still show at the next query."""
    at = START + timedelta(hours=3)
    events = [make_priced(time=at + timedelta(seconds=i)) for i in range(3)]
    directory = write_range(tmp_path, small(0, 0), events[:1]).parent

    def quiet() -> None:
        long_ago = time.time_ns() - 60 * 1_000_000_000
        for path in (directory, directory.parent):
            os.utime(path, ns=(long_ago, long_ago))

    quiet()
    with Lake(tmp_path) as lake:

        def requests() -> int:
            return lake.arrow(queries.spend(START, END)).to_pylist()[0]["requests"]

        assert [requests(), requests()] == [1, 1]
        later = write_range(tmp_path, small(1, 2), events[1:])
        assert requests() == 3
        quiet()
        assert requests() == 3
        later.unlink()
        assert requests() == 1


def test_queries_racing_compaction_never_read_a_row_twice(tmp_path: Path) -> None:
    """The sink writes a file per offset while compaction covers the files so far; four
    threads query all along: each answer counts every event it sees once."""
    at = START + timedelta(hours=3)
    events = [make_priced(time=at + timedelta(seconds=i)) for i in range(40)]
    write_range(tmp_path, small(0, 0), events[:1])
    written = threading.Event()
    answers: list[tuple[int, int]] = []

    def write() -> None:
        for offset in range(1, len(events)):
            write_range(tmp_path, small(offset, offset), events[offset : offset + 1])
            if offset % 5 == 0:
                write_range(tmp_path, compacted(0, offset), events[: offset + 1])
        written.set()

    with Lake(tmp_path) as lake:

        def read(_: int) -> None:
            while True:
                done = written.is_set()
                rows = lake.sql("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM usage")
                answers.append((int(rows.n[0]), int(rows.d[0])))
                if done:
                    return

        with ThreadPoolExecutor(5) as pool:
            readers = [pool.submit(read, i) for i in range(4)]
            pool.submit(write).result(timeout=60)
            for reader in readers:
                reader.result(timeout=60)
    assert len(answers) >= 8
    assert [n for n, d in answers if n != d] == []
    assert max(n for n, _ in answers) == len(events)


def test_queries_open_only_the_date_partitions_they_need(tmp_path: Path) -> None:
    at = START + timedelta(hours=3)
    write_events(tmp_path, [make_priced(time=at + timedelta(days=d)) for d in range(3)], "calls")
    for days_before in (500, 1, 0):
        as_of = at - timedelta(days=days_before)
        state = make_state(window_start=as_of, window_end=at + timedelta(days=1), as_of_time=as_of)
        directory = partition_dir(tmp_path, as_of.date(), BUDGET_STATE)
        write_parquet(states_to_table([state]), directory / "states.parquet")
    with Lake(tmp_path) as lake:

        def plan(query: queries.Query) -> str:
            return "\n".join(lake.sql(f"EXPLAIN {query.sql}", query.params).explain_value)

        assert "Scanning Files: 1/3" in plan(queries.spend(at, at + timedelta(hours=1)))
        status = queries.budget_status(at=at)
        assert "Scanning Files: 2/3" in plan(status), "not the state from 500 days before"
        assert lake.arrow(status).column("as_of_time").to_pylist() == [at]


def test_files_with_a_new_column_and_without_an_old_one_read_together(tmp_path: Path) -> None:
    at = START + timedelta(hours=3)
    older = priced_to_table([make_priced(time=at, backend="b-old")]).drop_columns(
        ["backend", "ttft_ms", "tags"]
    )
    write_parquet(older, partition_dir(tmp_path, at.date()) / "older.parquet")
    with Lake(tmp_path) as lake:
        by_backend = queries.spend(START, END, group_by=["backend"])
        assert lake.arrow(by_backend).column("backend").to_pylist() == [None]
        newer = priced_to_table([make_priced(time=at, backend="b-new")])
        newer = newer.append_column("region", pa.array(["eu-west"]))
        write_parquet(newer, partition_dir(tmp_path, at.date()) / "newer.parquet")
        assert lake.arrow(by_backend).column("backend").to_pylist() == ["b-new", None]
        regions = lake.sql("SELECT region, count(*) AS n FROM priced_usage GROUP BY ALL ORDER BY 1")
        assert regions.n.tolist() == [1, 1]
        assert regions.region.iloc[0] == "eu-west"
        assert pd.isna(regions.region.iloc[1])


def test_arrow_keeps_money_exact_and_frames_give_floats(lake: Lake) -> None:
    query = queries.spend(START, END, filters={"tenant": ["edge-co"], "team": ["ops"]})
    table = lake.arrow(query)
    assert table.schema.field("cost_usd").type == pa.decimal128(38, 12)
    tiny = TINY * 6
    assert table.column("cost_usd").to_pylist() == [Decimal("0.000345") + tiny]
    assert lake.frame(query).cost_usd.dtype == "float64"


def test_pages_cover_every_row_once_in_order(lake: Lake) -> None:
    query = queries.spend(START, END, group_by=["team", "model"], granularity="day")
    whole = lake.arrow(query).to_pylist()
    pages = [
        lake.arrow(query, limit=97, offset=offset).to_pylist()
        for offset in range(0, len(whole) + 97, 97)
    ]
    assert [row for page in pages for row in page] == whole
    assert len(whole) > 300


def test_threads_share_one_lake(lake: Lake) -> None:
    query = queries.spend(START, END, group_by=["team"], granularity="hour", tz="Europe/Berlin")
    expected = lake.frame(query)
    barrier = threading.Barrier(4)

    def ask(_: int) -> pd.DataFrame:
        barrier.wait(timeout=10)
        return lake.frame(query)

    with ThreadPoolExecutor(4) as pool:
        for frame in pool.map(ask, range(4)):
            pd.testing.assert_frame_equal(frame, expected)


def test_notebook_shortcuts_run_the_same_queries(lake: Lake) -> None:
    by_model = lake.spend(START, END, group_by=["model"], granularity="week")
    pd.testing.assert_frame_equal(
        by_model, lake.frame(queries.spend(START, END, group_by=["model"], granularity="week"))
    )
    assert lake.sql("SELECT count(*) AS n FROM prices WHERE input_usd > ?", (0,)).n[0] > 10


@pytest.mark.parametrize(
    ("ask", "message"),
    [
        (lambda: queries.spend(START, END, group_by=["colour"]), "unknown dimension"),
        (lambda: queries.spend(START, END, group_by=["team", "team"]), "twice"),
        (lambda: queries.spend(END, START), "must be after start"),
        (lambda: queries.spend(START.replace(tzinfo=None), END), "timezone-aware"),
        (lambda: queries.spend(START, START + timedelta(days=500), granularity="hour"), "400"),
        (lambda: queries.spend(START, END, granularity="fortnight"), "unknown granularity"),
        (lambda: queries.spend(START, END, tz="Mars/Olympus"), "unknown time zone"),
        (lambda: queries.spend(START, END, filters={"team": []}), "no values"),
        (lambda: queries.spend(START, END, filters={"team": [7]}), "filter 'team'"),
        (lambda: queries.spend(START, END, filters={"secret": ["x"]}), "unknown dimension"),
        (lambda: queries.spend(START, END, tenant_scope=""), "tenant_scope"),
        (lambda: queries.top_spenders(START, END, by="team", n=0), "from 1 to 1000"),
        (lambda: queries.top_spenders(START, END, by="team", n=1001), "from 1 to 1000"),
        (lambda: queries.top_spenders(START, END, by="team", measure="joy"), "unknown measure"),
        (lambda: queries.errors(START, END, group_by=["status"]), "always grouped"),
        (lambda: queries.recent_alerts(START, END, kinds=["gossip"]), "unknown alert kind"),
        (lambda: queries.budget_status(status="fine"), "unknown budget status"),
        (lambda: queries.budget_burn("b", at=END, granularity="minute"), "unknown granularity"),
        (lambda: queries.budget_burn("b", at=END.replace(tzinfo=None)), "timezone-aware"),
        (lambda: queries.spend(FAR_PAST, END), r"start .*got 0001-01-01T00:00:00\+14:00$"),
        (lambda: queries.spend(START, FAR_FUTURE), r"end .*got 9999-12-31T23:59:59-14:00$"),
        (lambda: queries.budget_status(at=FAR_FUTURE), "at must be from 1970"),
        (lambda: queries.budget_burn("b", at=FAR_PAST), "at must be from 1970"),
        (lambda: queries.spend(datetime(1969, 12, 31, tzinfo=UTC), END), "got 1969-12-31T00:00"),
        (lambda: queries.spend(START, END, granularity="day", tz="posixrules"), "posixrules"),
        (lambda: queries.spend(START, END, granularity="day", tz="localtime"), "localtime"),
    ],
)
def test_invalid_arguments_are_refused_clearly(ask: Callable[[], Any], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        ask()


def test_the_lake_is_read_only(lake: Lake, tmp_path: Path) -> None:
    target = tmp_path / "written.csv"
    for statement in (
        f"COPY (SELECT 1) TO '{target}'",
        f"EXPLAIN ANALYZE COPY (SELECT * FROM priced_usage) TO '{target}'",
        f"/* plan */ explain (analyse) copy (select 1) to '{target}'",
        f"EXPLAIN (FORMAT json, ANALYZE true) COPY (SELECT 1) TO '{target}'",
        f"EXPLAIN COPY (SELECT 1) TO '{target}'",
        "EXPLAIN ANALYZE SELECT 1",
    ):
        with pytest.raises(QueryError, match="read-only"):
            lake.sql(statement)
    assert not target.exists()
    assert lake.sql("WITH n AS (SELECT 2 AS x) SELECT x FROM n").x[0] == 2
    assert lake.sql("EXPLAIN SELECT count(*) FROM usage").explain_key[0] == "physical_plan"
    with pytest.raises(QueryError, match="read-only"):
        lake.sql("CREATE TABLE t AS SELECT 1")
    with pytest.raises(QueryError, match="one statement"):
        lake.sql("SELECT 1; SELECT 2")
    with pytest.raises(QueryError, match="limit"):
        lake.arrow(queries.spend(START, END), limit=-1)
