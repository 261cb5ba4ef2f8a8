"""Re-pricing from the facts: a period priced again under another catalog, the lake untouched."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from analytics.query_terms import QueryError
from analytics.reporting import BackgroundServer, hash_key
from analytics.reporting.server import app_from_settings
from analytics.repricing import reprice
from tests.billing_world import FALLBACK, PRICES, readme_command, write_billed_lake
from tollgate.pricing import read_catalog_yaml
from tollgate.settings import Settings

NEW_PRICES = (
    PRICES
    + """\
  - provider: openai
    model: gpt-4o
    effective_from: 2026-03-01
    input: 2.00
    output: 8.00
    cache_read: 1.00
"""
    + FALLBACK
    + """\
contracts:
  - tenant: acme
    effective_from: 2026-01-01
    discount_pct: 30
"""
)
"""List prices cut from March, and a new contract: acme 30 % off everything."""
MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
# tenant, model: requests, old list, old billed, new list, new billed, delta. By hand:
# acme's gpt-4o calls were 3.00 at list, 2.40 billed (20 % off), each; at the new list
# 1.20 + 0.40 + 0.80 = 2.40, and 30 % off that is 1.68. Its refused call costs nothing.
# The Claude call: 0.24 + 0.0975 + 0.15 = 0.4875 at list, 0.34125 at 30 % off.
# globex: 1,000 tokens at 2.50 then 2.00 per million, no contract.
EXPECTED = {
    ("acme", "claude-sonnet-4"): (1, "0.4875", "0.4875", "0.4875", "0.34125", "-0.14625"),
    ("acme", "gpt-4o"): (3, "6.0", "4.8", "4.8", "3.36", "-1.44"),
    ("globex", "gpt-4o"): (1, "0.0025", "0.0025", "0.002", "0.002", "-0.0005"),
}
FIGURES = ("old_list_usd", "old_billed_usd", "new_list_usd", "new_billed_usd", "delta_usd")


def fingerprint(lake: Path) -> dict[str, tuple[int, str]]:
    """Every file of the lake: its modification time and content hash."""
    return {
        str(path.relative_to(lake)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(lake.rglob("*"))
        if path.is_file()
    }


def figures(table: pa.Table) -> dict[tuple[str, str], tuple[object, ...]]:
    return {
        (row["tenant"], row["model"]): (
            int(row["requests"]),
            *(Decimal(str(row[name])).normalize() for name in FIGURES),
        )
        for row in table.to_pylist()
    }


def expected() -> dict[tuple[str, str], tuple[object, ...]]:
    return {
        key: (requests, *(Decimal(v).normalize() for v in amounts))
        for key, (requests, *amounts) in EXPECTED.items()
    }


def test_the_report_matches_hand_computed_figures_and_leaves_the_lake_alone(
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    write_billed_lake(lake)
    before = fingerprint(lake)

    table = reprice(lake, read_catalog_yaml(NEW_PRICES), *MARCH)

    assert figures(table) == expected()
    assert table.column("contract_priced").to_pylist() == [1, 3, 0]
    assert fingerprint(lake) == before


def test_a_tenant_scope_and_other_groups(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_billed_lake(lake)

    table = reprice(
        lake, read_catalog_yaml(NEW_PRICES), *MARCH, group_by=["provider"], tenant_scope="globex"
    )

    assert table.to_pylist()[0]["provider"] == "openai"
    assert table.num_rows == 1
    assert table.column("requests").to_pylist() == [1]
    with pytest.raises(QueryError, match="unknown dimension"):
        reprice(lake, read_catalog_yaml(NEW_PRICES), *MARCH, group_by=["colour"])


def test_the_readme_reprice_command_prints_the_same_report(tmp_path: Path) -> None:
    write_billed_lake(tmp_path / "var" / "lake")
    command = readme_command("tollgate reprice")
    catalog_name = command[command.index("--catalog") + 1]
    (tmp_path / catalog_name).write_text(NEW_PRICES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}

    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    out = command[command.index("--out") + 1]
    table = pacsv.read_csv(
        io.BytesIO((tmp_path / out).read_bytes()),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in ("tenant", "model", *FIGURES)}
        ),
    )
    assert figures(table) == expected()


def test_spend_answers_under_a_named_catalog_for_admin_and_tenant_keys(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_billed_lake(lake)
    catalogs = tmp_path / "catalogs"
    catalogs.mkdir()
    (catalogs / "march-2026.yaml").write_text(NEW_PRICES)
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(
        f"keys:\n  - {{id: acme-fin, key_sha256: '{hash_key('acme-k')}', tenant: acme}}\n"
    )
    settings = Settings(
        lake={"path": lake},
        reporting={"admin_key": "admin-k", "keys_file": keys_file, "catalogs_dir": catalogs},
    )
    params = {
        "start": "2026-03-01T00:00:00Z",
        "end": "2026-04-01T00:00:00Z",
        "catalog": "march-2026",
        "group_by": ["tenant", "model"],
    }

    with BackgroundServer(app_from_settings(settings)) as server:

        def ask(key: str, **extra: object) -> httpx.Response:
            return httpx.get(
                f"{server.url}/v1/spend",
                params={**params, **extra},
                headers={"Authorization": f"Bearer {key}"},
            )

        admin, acme = ask("admin-k"), ask("acme-k")
        unknown, bucketed = ask("admin-k", catalog="nope"), ask("admin-k", granularity="day")

    assert admin.status_code == 200, admin.text
    rows = {(r["tenant"], r["model"]): r for r in admin.json()["rows"]}
    for key, (requests, _, old_billed, new_list, new_billed, _) in EXPECTED.items():
        row = rows[key]
        assert row["requests"] == requests
        assert Decimal(row["cost_usd"]) == Decimal(new_billed)
        assert Decimal(row["list_cost_usd"]) == Decimal(new_list)
        assert Decimal(row["billed_cost_usd"]) == Decimal(old_billed)
    assert {r["tenant"] for r in acme.json()["rows"]} == {"acme"}
    assert unknown.status_code == 422
    assert "march-2026" in unknown.text
    assert bucketed.status_code == 422
    assert "granularity" in bucketed.text


def test_the_command_refuses_bad_input_with_a_message(tmp_path: Path) -> None:
    bad_catalog = tmp_path / "bad.yaml"
    bad_catalog.write_text("prices:\n  - model: x\n    effective_from: 2026-01-01\n")
    good_catalog = tmp_path / "good.yaml"
    good_catalog.write_text(NEW_PRICES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = readme_command("tollgate reprice")[:3]
        return subprocess.run(
            [*command, "reprice", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    naive = run(
        "--catalog", str(good_catalog), "--start", "2026-03-01T00:00", "--end", "2026-04-01"
    )
    broken = run("--catalog", str(bad_catalog), "--start", "2026-03-01", "--end", "2026-04-01")
    grouped = run(
        "--catalog", str(good_catalog), "--start", "2026-03-01", "--end", "2026-04-01",
        "--group-by", "colour",
    )  # fmt: skip

    assert naive.returncode == 2
    assert "names no offset" in naive.stderr
    assert broken.returncode == 2
    assert "bad.yaml" in broken.stderr
    assert "`input` is required" in broken.stderr
    assert grouped.returncode == 2
    assert "unknown dimension" in grouped.stderr
