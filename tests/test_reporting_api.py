"""The reporting API over a real lake, served by a real uvicorn on loopback.

The API is a faithful transport: every answer equals ``Lake.arrow(queries.X(...))`` for
the same arguments. It is strict at the door (422 naming the parameter) and tenant-tight:
a tenant key never sees another tenant's rows, whatever it sends.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from analytics import queries
from analytics.lake_db import Lake
from analytics.reporting import BackgroundServer, KeyRing, create_app, hash_key
from tollgate.settings import ReportingSettings

ADMIN_KEY = "admin-7f3c9a-reporting"
FINOPS_KEY = "finops-2b8e41-reporting"
OTHER_KEY_HASH = "0" * 64

LAKE_EVENTS = 20_000
FAR_PAST = "0001-01-01T00:00:00+14:00"
FAR_FUTURE = "9999-12-31T23:59:59-14:00"


@dataclass
class World:
    """A seeded lake, the API over it, and what the tests need to know about both."""

    path: Path
    lake: Lake
    url: str
    start: datetime
    end: datetime
    tenant: str
    """The tenant with the most rows: the one the tenant key belongs to."""
    other: str
    """Another tenant with rows: the one that must never show."""
    tenant_key: str

    def range(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @property
    def budgets_at(self) -> datetime:
        """Midnight of the lake's last day: its daily, weekly and monthly windows are open."""
        return self.end - timedelta(days=1)


def seeded_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic lake per test session, shared by the reporting and dashboard tests."""
    from analytics.seed import seed_lake

    path = tmp_path_factory.getbasetemp() / "reporting-lake"
    if not (path / "priced").is_dir():
        seed_lake(path, LAKE_EVENTS, days=30, seed=11)
    return path


def lake_range(lake: Lake) -> tuple[datetime, datetime]:
    """Whole UTC days covering every event of the lake."""
    bounds = lake.sql("SELECT min(end_time) AS first, max(end_time) AS last FROM priced_usage")
    first = bounds["first"][0].to_pydatetime()
    last = bounds["last"][0].to_pydatetime()
    start = first.replace(hour=0, minute=0, second=0, microsecond=0)
    end = last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return start, end


def keys_for(tmp: Path, tenant: str) -> tuple[KeyRing, str]:
    """An admin key from the settings, and a keys file with an admin and a tenant key."""
    tenant_key = f"{tenant}-reporting-key-5d1e"
    keys_file = tmp / "reporting-keys.yaml"
    keys_file.write_text(
        "keys:\n"
        f"  - {{id: {tenant}-finance, key_sha256: '{hash_key(tenant_key)}', tenant: {tenant}}}\n"
        f"  - {{id: finops, key_sha256: '{hash_key(FINOPS_KEY)}', admin: true}}\n"
        f"  - {{id: stranger, key_sha256: '{OTHER_KEY_HASH}', tenant: nobody}}\n"
    )
    settings = ReportingSettings(admin_key=ADMIN_KEY, keys_file=keys_file)
    return KeyRing.from_settings(settings), tenant_key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path = seeded_lake(tmp_path_factory)
    lake = Lake(path)
    start, end = lake_range(lake)
    by_tenant = lake.frame(queries.top_spenders(start, end, by="tenant", n=5))
    tenant, other = by_tenant["tenant"][0], by_tenant["tenant"][1]
    keys, tenant_key = keys_for(tmp_path_factory.mktemp("keys"), tenant)
    with BackgroundServer(create_app(path, keys)) as server:
        yield World(path, lake, server.url, start, end, tenant, other, tenant_key)
    lake.close()


@pytest.fixture
def admin(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


@pytest.fixture
def tenant(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, headers={"x-api-key": world.tenant_key}) as client:
        yield client


def rows(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def assert_same_rows(api_rows: list[dict[str, Any]], table: pa.Table) -> None:
    """The API's JSON rows hold exactly ``table``'s values (money exactly, as strings)."""
    assert len(api_rows) == table.num_rows
    if not api_rows:
        return
    assert list(api_rows[0]) == table.column_names
    for name in table.column_names:
        expected = table.column(name).to_pylist()
        got = [row[name] for row in api_rows]
        for want, have in zip(expected, got, strict=True):
            if want is None or have is None:
                assert (want, have) == (None, None), name
            elif isinstance(want, Decimal):
                assert Decimal(have) == want, name
            elif isinstance(want, datetime):
                assert datetime.fromisoformat(have) == want, name
            elif isinstance(want, float):
                assert have == pytest.approx(want, rel=1e-12), name
            elif isinstance(want, list):  # a map column
                assert have == dict(want), name
            else:
                assert have == want, name


# -- a faithful transport ---------------------------------------------------------------------


def test_spend_per_model_and_day_is_the_query_run_on_the_lake(
    world: World, admin: httpx.Client
) -> None:
    params = {**world.range(), "group_by": ["model"], "granularity": "day", "tz": "Europe/Paris"}
    got = rows(admin.get("/v1/spend", params=params))
    expected = world.lake.arrow(
        queries.spend(
            world.start, world.end, group_by=["model"], granularity="day", tz="Europe/Paris"
        )
    )
    assert len(got) > 30
    assert_same_rows(got, expected)


@pytest.mark.parametrize(
    ("path", "params", "build"),
    [
        ("top", {"by": "api_key_id", "n": "7"}, lambda s, e, t: queries.top_spenders(
            s, e, by="api_key_id", n=7, tenant_scope=t)),
        ("top", {"by": "model", "measure": "total_tokens"}, lambda s, e, t: queries.top_spenders(
            s, e, by="model", measure="total_tokens", tenant_scope=t)),
        ("unit-costs", {"group_by": ["provider", "model"]}, lambda s, e, t: queries.unit_costs(
            s, e, group_by=["provider", "model"], tenant_scope=t)),
        ("cache-savings", {"group_by": ["team"]}, lambda s, e, t: queries.cache_savings(
            s, e, group_by=["team"], tenant_scope=t)),
        ("errors", {"group_by": ["backend"], "operation": ["chat"]}, lambda s, e, t: queries.errors(
            s, e, group_by=["backend"], filters={"operation": ["chat"]}, tenant_scope=t)),
        ("spend", {"model": ["gpt-4o", "gpt-4o-mini"], "group_by": ["user"]},
         lambda s, e, t: queries.spend(s, e, group_by=["user"],
                                       filters={"model": ["gpt-4o", "gpt-4o-mini"]},
                                       tenant_scope=t)),
        ("alerts", {}, lambda s, e, t: queries.recent_alerts(s, e, tenant_scope=t)),
        ("budgets", {"at": "e-1d"}, lambda s, e, t: queries.budget_status(
            at=e - timedelta(days=1), tenant_scope=t)),
        ("budgets", {"status": "ok", "at": "e-1d"}, lambda s, e, t: queries.budget_status(
            at=e - timedelta(days=1), status="ok", tenant_scope=t)),
    ],
)  # fmt: skip
@pytest.mark.parametrize("as_tenant", [False, True], ids=["admin", "tenant"])
def test_every_endpoint_answers_what_its_query_answers(
    world: World,
    admin: httpx.Client,
    tenant: httpx.Client,
    path: str,
    params: dict[str, Any],
    build: Any,
    as_tenant: bool,
) -> None:
    client = tenant if as_tenant else admin
    timed = {} if path == "budgets" else world.range()
    if params.get("at") == "e-1d":
        params = {**params, "at": world.budgets_at.isoformat()}
    got = rows(client.get(f"/v1/{path}", params={**timed, **params, "limit": 10_000}))
    expected = world.lake.arrow(build(world.start, world.end, world.tenant if as_tenant else None))
    assert expected.num_rows > 0
    assert_same_rows(got, expected)


def test_spend_per_tenant_matches_pandas_over_the_parquet_files(
    world: World, admin: httpx.Client
) -> None:
    frame = pd.read_parquet(world.path / "priced", columns=["event_id", "tenant", "cost_usd"])
    frame = frame.drop_duplicates("event_id")
    expected = {
        tenant: sum(costs, Decimal(0)) for tenant, costs in frame.groupby("tenant")["cost_usd"]
    }
    got = rows(admin.get("/v1/spend", params={**world.range(), "group_by": "tenant"}))
    assert {row["tenant"]: Decimal(row["cost_usd"]) for row in got} == expected
    requests = {row["tenant"]: row["requests"] for row in got}
    assert requests == frame.groupby("tenant").size().to_dict()


def test_money_in_json_is_an_exact_decimal_string(world: World, admin: httpx.Client) -> None:
    body = admin.get("/v1/spend", params=world.range()).json()
    (total,) = body["rows"]
    assert isinstance(total["cost_usd"], str)
    assert re.fullmatch(r"\d+(\.\d{1,12})?", total["cost_usd"])
    assert {"name": "cost_usd", "type": "decimal128(38, 12)"} in body["columns"]


# -- formats and pages ------------------------------------------------------------------------


def test_csv_parquet_and_arrow_hold_the_same_rows_as_json(
    world: World, admin: httpx.Client
) -> None:
    params = {**world.range(), "group_by": ["tenant", "provider"]}
    as_json = rows(admin.get("/v1/spend", params=params))
    expected = world.lake.arrow(
        queries.spend(world.start, world.end, group_by=["tenant", "provider"])
    )

    as_parquet = admin.get("/v1/spend", params={**params, "format": "parquet"})
    assert as_parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert pq.read_table(io.BytesIO(as_parquet.content)).equals(expected)

    as_arrow = admin.get(
        "/v1/spend", params=params, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )
    assert as_arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert pa.ipc.open_stream(as_arrow.content).read_all().equals(expected)

    as_csv = admin.get("/v1/spend", params=params, headers={"Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    text_columns = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in expected.column_names}
    )
    table = pacsv.read_csv(io.BytesIO(as_csv.content), convert_options=text_columns)
    assert table.column_names == expected.column_names
    csv_rows = table.to_pylist()
    assert len(csv_rows) == len(as_json) > 3
    for from_csv, from_json in zip(csv_rows, as_json, strict=True):
        assert from_csv == {k: "" if v is None else str(v) for k, v in from_json.items()}


def test_pages_cover_every_row_once_in_order(world: World, admin: httpx.Client) -> None:
    params = {**world.range(), "group_by": ["api_key_id", "model"], "granularity": "day"}
    everything = rows(admin.get("/v1/spend", params={**params, "limit": 10_000}))
    assert len(everything) > 1200
    paged: list[dict[str, Any]] = []
    url: str | None = "/v1/spend"
    request_params: dict[str, Any] | None = {**params, "limit": 500}
    pages = 0
    while url is not None:
        body = admin.get(url, params=request_params).json()
        paged.extend(body["rows"])
        url, request_params = body["next"], None
        pages += 1
        if url is not None:
            assert body["next_offset"] == len(paged)
    assert pages == -(-len(everything) // 500)
    assert paged == everything


def test_a_binary_page_says_where_the_next_one_starts(world: World, admin: httpx.Client) -> None:
    params = {**world.range(), "group_by": "model", "limit": 2, "format": "arrow"}
    first = admin.get("/v1/spend", params=params)
    assert first.headers["x-next-offset"] == "2"
    assert 'rel="next"' in first.headers["link"]
    assert pa.ipc.open_stream(first.content).read_all().num_rows == 2


# -- keys and tenants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-key"},
        {"x-api-key": "not-a-key"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer " + OTHER_KEY_HASH},
    ],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "basic", "the-stored-hash"],
)
def test_a_request_without_a_known_key_is_refused_with_401(
    world: World, headers: dict[str, str]
) -> None:
    response = httpx.get(f"{world.url}/v1/spend", params=world.range(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "rows" not in response.json()


def test_keys_from_the_settings_and_the_keys_file_say_who_they_are(world: World) -> None:
    def whoami(key: str) -> dict[str, Any]:
        return httpx.get(f"{world.url}/v1/whoami", headers={"x-api-key": key}).json()

    assert whoami(ADMIN_KEY) == {"key_id": "admin", "tenant": None, "admin": True}
    assert whoami(FINOPS_KEY) == {"key_id": "finops", "tenant": None, "admin": True}
    assert whoami(world.tenant_key)["tenant"] == world.tenant


def test_a_tenant_key_sees_its_own_rows_only(
    world: World, admin: httpx.Client, tenant: httpx.Client
) -> None:
    params = {**world.range(), "group_by": ["tenant", "model"]}
    own = rows(tenant.get("/v1/spend", params=params))
    assert own
    assert {row["tenant"] for row in own} == {world.tenant}
    assert own == rows(admin.get("/v1/spend", params={**params, "tenant": world.tenant}))
    everyone = rows(admin.get("/v1/spend", params=params))
    assert world.other in {row["tenant"] for row in everyone}


def test_a_tenant_key_naming_another_tenant_gets_what_no_tenant_gets(
    world: World, admin: httpx.Client, tenant: httpx.Client
) -> None:
    for path in ("spend", "top", "unit-costs", "cache-savings", "errors"):
        params: dict[str, Any] = world.range()
        if path == "top":
            params["by"] = "tenant"
        crafted = tenant.get(f"/v1/{path}", params={**params, "tenant": world.other})
        nobody = admin.get(f"/v1/{path}", params={**params, "tenant": "no-such-tenant"})
        assert rows(crafted) == rows(nobody), path
        assert world.other not in crafted.text
    both = rows(
        tenant.get(
            "/v1/spend",
            params={**world.range(), "tenant": [world.other, world.tenant], "group_by": "tenant"},
        )
    )
    assert [row["tenant"] for row in both] == [world.tenant]


def test_a_tenant_sees_only_its_budgets_and_alerts(
    world: World, admin: httpx.Client, tenant: httpx.Client
) -> None:
    at = {"at": world.budgets_at.isoformat()}
    all_budgets = rows(admin.get("/v1/budgets", params=at))
    assert {b["tenant"] for b in all_budgets} - {world.tenant, None}, "the lake has others"
    own_budgets = rows(tenant.get("/v1/budgets", params=at))
    assert own_budgets
    assert {b["tenant"] for b in own_budgets} == {world.tenant}
    alerts = rows(tenant.get("/v1/alerts", params={**world.range(), "limit": 10_000}))
    assert all(a["tenant"] == world.tenant for a in alerts)
    every_alert = rows(admin.get("/v1/alerts", params={**world.range(), "limit": 10_000}))
    assert len(every_alert) > len(alerts)


def test_another_tenants_budget_burn_is_404_like_a_missing_one(
    world: World, admin: httpx.Client, tenant: httpx.Client
) -> None:
    budgets = rows(admin.get("/v1/budgets", params={"at": world.budgets_at.isoformat()}))
    theirs = next(b for b in budgets if b["tenant"] == world.other)
    ours = next(b for b in budgets if b["tenant"] == world.tenant)
    at = {"at": ours["as_of_time"], "granularity": "day"}
    mine = rows(tenant.get(f"/v1/budgets/{ours['budget_id']}/burn", params=at))
    assert len(mine) > 1
    assert mine[0]["kind"] == "actual"
    assert mine == rows(admin.get(f"/v1/budgets/{ours['budget_id']}/burn", params=at))
    for budget_id in (theirs["budget_id"], "no-such-budget"):
        refused = tenant.get(f"/v1/budgets/{budget_id}/burn", params=at)
        assert refused.status_code == 404
        moment = datetime.fromisoformat(ours["as_of_time"]).isoformat()
        assert refused.json() == {
            "detail": f"no budget {budget_id!r} with a window at {moment} is visible to this key"
        }


def test_budgets_show_the_windows_open_at_the_instant_asked(
    world: World, admin: httpx.Client
) -> None:
    later = world.end + timedelta(days=40)
    assert rows(admin.get("/v1/budgets", params={"at": later.isoformat()})) == []
    before = datetime.now(UTC)
    now_open = rows(admin.get("/v1/budgets"))
    after = datetime.now(UTC)
    for budget in now_open:
        assert datetime.fromisoformat(budget["window_start"]) <= after
        assert datetime.fromisoformat(budget["window_end"]) > before
    open_then = rows(admin.get("/v1/budgets", params={"at": world.budgets_at.isoformat()}))
    assert open_then
    for budget in open_then:
        start, end = (datetime.fromisoformat(budget[k]) for k in ("window_start", "window_end"))
        assert start <= world.budgets_at < end
    ours = open_then[0]
    burn = admin.get(
        f"/v1/budgets/{ours['budget_id']}/burn",
        params={"subject": ours["subject"], "at": later.isoformat()},
    )
    assert burn.status_code == 404, "its window has ended by then"


INJECTIONS = [
    "x' OR '1'='1",
    "acme'; DROP VIEW priced_usage; --",
    "1) OR (1=1",
    "tenant",
    "* FROM priced_usage --",
    '"; SELECT 1; --',
    "%",
    "%27%20OR%201%3D1",
]
PARAMETERS = [
    "tenant", "team", "api_key_id", "user", "model", "provider", "status", "operation",
    "backend", "group_by", "granularity", "tz", "start", "end", "limit", "offset", "format",
]  # fmt: skip


@pytest.mark.parametrize("parameter", PARAMETERS)
def test_crafted_parameters_never_show_another_tenants_rows(
    world: World, tenant: httpx.Client, parameter: str
) -> None:
    for injection in [*INJECTIONS, world.other]:
        params: dict[str, Any] = {**world.range(), "group_by": "tenant", parameter: injection}
        if parameter == "group_by":
            params["group_by"] = ["tenant", injection]
        response = tenant.get("/v1/spend", params=params)
        assert response.status_code in (200, 422), (parameter, injection, response.text)
        assert world.other not in response.text or response.status_code == 422
        if response.status_code == 200:
            assert {row["tenant"] for row in response.json()["rows"]} <= {world.tenant}
        else:
            assert parameter in response.json()["detail"]
    # The lake is untouched: the views still answer.
    assert rows(tenant.get("/v1/spend", params=world.range()))


def test_crafted_path_and_subject_never_reach_another_tenant(
    world: World, tenant: httpx.Client
) -> None:
    for injection in INJECTIONS:
        response = tenant.get(f"/v1/budgets/{injection}/burn")
        assert response.status_code in (404, 422), injection
        response = tenant.get("/v1/budgets", params={"budget_id": injection})
        assert response.status_code in (200, 422), injection
        if response.status_code == 200:
            assert all(row["tenant"] == world.tenant for row in response.json()["rows"])


# -- clear refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [
        ({"group_by": "salary"}, "group_by", "Input should be 'tenant'"),
        ({"group_by": ["model", "model"]}, "group_by", "names a dimension twice"),
        ({"start": "yesterday"}, "start", "ISO-8601 instant with an offset"),
        ({"start": "2026-03-01T00:00:00"}, "start", "timezone"),
        ({"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"}, "end", "after"),
        ({"tz": "Mars/Olympus_Mons"}, "tz", "unknown time zone"),
        ({"tz": "posixrules"}, "tz", "unknown time zone"),
        ({"tz": "localtime"}, "tz", "unknown time zone"),
        (
            {"start": FAR_PAST},
            "start",
            f"must be from 1970-01-01T00:00:00+00:00 to before "
            f"9999-01-01T00:00:00+00:00, got {FAR_PAST}",
        ),
        ({"end": FAR_FUTURE}, "end", f"got {FAR_FUTURE}"),
        ({"start": "1969-12-31T23:00:00+02:00"}, "start", "got 1969-12-31T23:00:00+02:00"),
        ({"granularity": "fortnight"}, "granularity", "'hour'"),
        ({"limit": "0"}, "limit", "greater than or equal to 1"),
        ({"limit": "10001"}, "limit", "less than or equal to 10000"),
        ({"offset": "-1"}, "offset", "greater than or equal to 0"),
        ({"format": "xlsx"}, "format", "'json'"),
        ({"filter": "tenant:globex"}, "filter", "unknown query parameter"),
        ({"limit": ["5", "6"]}, "limit", "more than once"),
    ],
)
def test_a_bad_parameter_gets_422_naming_it(
    world: World, tenant: httpx.Client, params: dict[str, Any], parameter: str, words: str
) -> None:
    response = tenant.get("/v1/spend", params=params)
    assert response.status_code == 422
    body = response.json()
    assert f"`{parameter}`" in body["detail"]
    assert words in body["detail"]
    assert body["errors"][0]["parameter"] == parameter


@pytest.mark.parametrize("instant", [FAR_PAST, FAR_FUTURE])
def test_instants_at_the_ends_of_the_calendar_get_422_on_every_endpoint(
    world: World, admin: httpx.Client, instant: str
) -> None:
    for path, parameter in [
        ("/v1/spend", "start"),
        ("/v1/top?by=team", "end"),
        ("/v1/alerts", "start"),
        ("/v1/budgets", "at"),
        ("/v1/budgets/any-budget/burn", "at"),
    ]:
        response = admin.get(path, params={parameter: instant})
        assert response.status_code == 422, (path, response.text)
        assert f"`{parameter}`" in response.json()["detail"]
        assert f"got {instant}" in response.json()["detail"]
        assert "datetime.datetime" not in response.text


def test_an_offset_whose_plus_arrived_as_a_space_still_reads(
    world: World, tenant: httpx.Client
) -> None:
    raw = f"/v1/spend?start={world.start.isoformat()}&end={world.end.isoformat()}"
    assert "+00:00" in raw, "sent unescaped: the server sees a space"
    assert rows(tenant.get(raw)) == rows(tenant.get("/v1/spend", params=world.range()))


def test_an_unwritable_accept_header_gets_406(world: World, admin: httpx.Client) -> None:
    response = admin.get("/v1/spend", headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert "format=" in response.json()["detail"]


def test_an_answer_holding_another_tenants_rows_is_refused(
    world: World, tenant: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last net under the queries: a scope bug becomes a 500, never a leak."""
    real = queries.budget_status
    monkeypatch.setattr(queries, "budget_status", lambda **kw: real(**{**kw, "tenant_scope": None}))
    response = tenant.get("/v1/budgets", params={"at": world.budgets_at.isoformat()})
    assert response.status_code == 500
    assert world.other not in response.text


# -- operations -------------------------------------------------------------------------------


def test_healthz_says_whether_the_lake_can_be_read(world: World, tmp_path: Path) -> None:
    assert httpx.get(f"{world.url}/healthz").json() == {"status": "ok"}
    keys, _ = keys_for(tmp_path, "acme")
    with BackgroundServer(create_app(tmp_path / "no-lake-here", keys)) as missing:
        response = httpx.get(f"{missing.url}/healthz")
    assert response.status_code == 503


def test_metrics_count_requests_by_route(world: World, admin: httpx.Client) -> None:
    def served(status: str) -> float:
        text = httpx.get(f"{world.url}/metrics").text
        pattern = (
            r'^tollgate_reporting_requests_total\{endpoint="/v1/budgets/\{budget_id\}/burn",'
            rf'status="{status}"\}} (\S+)$'
        )
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = served("404")
    for budget_id in ("missing-1", "missing-2", "missing-3"):
        assert admin.get(f"/v1/budgets/{budget_id}/burn").status_code == 404
    assert served("404") == before + 3
    text = httpx.get(f"{world.url}/metrics").text
    assert 'tollgate_reporting_query_duration_seconds_count{endpoint="/v1/spend"}' in text


def test_the_openapi_schema_lists_every_endpoint_and_the_key_schemes(world: World) -> None:
    schema = httpx.get(f"{world.url}/openapi.json").json()
    assert {
        "/v1/spend",
        "/v1/top",
        "/v1/unit-costs",
        "/v1/cache-savings",
        "/v1/errors",
        "/v1/budgets",
        "/v1/budgets/{budget_id}/burn",
        "/v1/alerts",
        "/healthz",
    } <= set(schema["paths"])
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    spend = schema["paths"]["/v1/spend"]["get"]
    documented = {p["name"]: p.get("description", "") for p in spend["parameters"]}
    assert {"start", "end", "tz", "granularity", "group_by", "tenant", "limit", "offset"} <= set(
        documented
    )
    assert all(documented.values())


def test_the_docs_page_needs_nothing_from_the_internet(world: World) -> None:
    page = httpx.get(f"{world.url}/docs")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text
    referenced = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert referenced, page.text
    for url in referenced:
        assert url.startswith("/"), f"/docs loads {url} from elsewhere"
        assert httpx.get(f"{world.url}{url}").status_code == 200, url


def test_tollgate_report_serves_the_lake_until_interrupted(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.cli", "report", "--port", "0", "--lake", str(world.path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**env, "TOLLGATE_REPORTING_ADMIN_KEY": ADMIN_KEY, "TOLLGATE_LOG_FORMAT": "text"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert url, line
        answer = httpx.get(
            f"{url.group(1)}/v1/spend",
            params=world.range(),
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        )
        assert rows(answer) == rows(
            httpx.get(
                f"{world.url}/v1/spend",
                params=world.range(),
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_tollgate_report_without_any_key_refuses_every_query(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.cli", "report", "--port", "0", "--lake", str(world.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "TOLLGATE_LOG_FORMAT": "text"},
    )
    try:
        assert process.stdout is not None
        url = re.search(r"(http://127\.0\.0\.1:\d+)", process.stdout.readline())
        assert url
        assert httpx.get(f"{url.group(1)}/healthz", timeout=30).status_code == 200
        refused = httpx.get(f"{url.group(1)}/v1/budgets", headers={"x-api-key": ADMIN_KEY})
        assert refused.status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        assert process.stderr is not None
        assert "TOLLGATE_REPORTING_ADMIN_KEY" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
