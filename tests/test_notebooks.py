"""The analysts' notebooks run top to bottom against a demo lake, and tell the truth.

Each notebook is executed once, in a real Jupyter kernel on this interpreter, over a lake
seeded with incidents; the tests then read what its cells printed and check it against
the lake's Parquet files, read with pyarrow alone.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pyarrow.parquet as pq
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from analytics.seed import SeedSummary, seed_lake
from analytics.seed_evaluations import WORST_MODEL

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> SeedSummary:
    """30 days of calls with a spend spike, a new key and an outage planted; in the middle of
    a month, so the monthly budgets' windows are open (and one is exceeded)."""
    lake = tmp_path_factory.mktemp("lake")
    return seed_lake(lake, 30_000, days=30, seed=7, end=datetime(2025, 5, 29, tzinfo=UTC))


@pytest.fixture(scope="module")
def demo_lake(seeded: SeedSummary) -> Path:
    return seeded.path


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A ``python3`` kernel that is this interpreter, whatever kernels the machine has."""
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "python3"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def execute(
    name: str, lake: Path, specs: KernelSpecManager, workdir: Path
) -> nbformat.NotebookNode:
    """Run the notebook top to bottom; a cell that raises fails the test here."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(
        notebook,
        km=manager,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    # The notebooks read their settings as every Tollgate process does: no stray TOLLGATE_*.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOLLGATE_")}
    env |= {"TOLLGATE_LAKE_PATH": str(lake), "MPLBACKEND": "Agg"}
    client.execute(env=env)
    return notebook


@pytest.fixture(scope="module")
def cost_explorer(
    demo_lake: Path, kernel_specs: KernelSpecManager, tmp_path_factory: pytest.TempPathFactory
) -> nbformat.NotebookNode:
    return execute("cost_explorer.ipynb", demo_lake, kernel_specs, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def anomaly_review(
    demo_lake: Path, kernel_specs: KernelSpecManager, tmp_path_factory: pytest.TempPathFactory
) -> nbformat.NotebookNode:
    return execute("anomaly_review.ipynb", demo_lake, kernel_specs, tmp_path_factory.mktemp("run"))


def summary(notebook: nbformat.NotebookNode) -> dict[str, Any]:
    """The JSON line the notebook's last cell prints."""
    lines = [
        line
        for output in notebook.cells[-1].outputs
        if output.output_type == "stream"
        for line in output.text.splitlines()
        if line.startswith("{")
    ]
    assert lines, "the summary cell printed no JSON"
    return json.loads(lines[-1])


def images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def sub_lake(lake: Path, name: str, start: str, end: str, time_column: str) -> pd.DataFrame:
    """Rows of one sub-lake whose ``time_column`` is in ``[start, end)``; money as Decimal."""
    files = sorted((lake / name).glob("date=*/*.parquet"))
    frame = pd.concat([pq.read_table(path).to_pandas() for path in files], ignore_index=True)
    instants = frame[time_column]
    return frame[(instants >= pd.Timestamp(start)) & (instants < pd.Timestamp(end))]


def key_of(subject: str) -> str:
    """``tenant=acme,api_key_id=key_1`` → ``key_1``."""
    return dict(part.split("=", 1) for part in subject.split(","))["api_key_id"]


def latest_budget_states(lake: Path) -> pd.DataFrame:
    states = sub_lake(lake, "budget_state", "1970-01-01T00:00Z", "2100-01-01T00:00Z", "as_of_time")
    states = states.sort_values("as_of_time")
    return states.groupby(["budget_id", "subject"], as_index=False).last()


def test_notebooks_are_saved_without_outputs() -> None:
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.kernelspec.name == "python3"
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), path


def test_cost_explorer_total_spend_matches_the_lake_files(
    cost_explorer: nbformat.NotebookNode, demo_lake: Path
) -> None:
    result = summary(cost_explorer)
    rows = sub_lake(demo_lake, "priced", result["start"], result["end"], "end_time")
    rows = rows.drop_duplicates("event_id")
    assert len(rows) > 10_000
    assert Decimal(result["total_cost_usd"]) == sum(rows["cost_usd"], Decimal(0))
    assert result["requests"] == len(rows)
    assert result["total_tokens"] == int((rows["input_tokens"] + rows["output_tokens"]).sum())


def test_cost_explorer_ranks_teams_models_and_keys_as_the_lake_does(
    cost_explorer: nbformat.NotebookNode, demo_lake: Path
) -> None:
    result = summary(cost_explorer)
    rows = sub_lake(demo_lake, "priced", result["start"], result["end"], "end_time")
    rows = rows.drop_duplicates("event_id").assign(cost=lambda r: r["cost_usd"].astype(float))
    rows["model"] = rows["request_model"].fillna(rows["response_model"])
    assert result["top_team"] == rows.groupby("team")["cost"].sum().idxmax()
    assert result["top_model"] == rows.groupby("model")["cost"].sum().idxmax()
    by_key = rows.groupby("api_key_id")["cost"].sum().sort_values(ascending=False)
    assert result["top_keys"] == by_key.index[:10].tolist()


def test_cost_explorer_draws_its_charts(cost_explorer: nbformat.NotebookNode) -> None:
    # team, model, trend, top keys, unit costs, cache savings, errors, burn-down
    assert images(cost_explorer) >= 8
    assert summary(cost_explorer)["burn_down"] is not None
    assert summary(cost_explorer)["cache_savings_usd"] > 0


def test_anomaly_review_lists_every_alert_of_the_period(
    anomaly_review: nbformat.NotebookNode, demo_lake: Path
) -> None:
    result = summary(anomaly_review)
    alerts = sub_lake(demo_lake, "alerts", result["start"], result["end"], "time")
    assert sorted(result["alert_ids"]) == sorted(alerts["alert_id"].astype(str))
    assert result["alerts_by_kind"] == alerts["kind"].value_counts().to_dict()


def test_anomaly_review_shows_the_seeded_incidents(
    anomaly_review: nbformat.NotebookNode, demo_lake: Path, seeded: SeedSummary
) -> None:
    result = summary(anomaly_review)
    listed = {(alert["kind"], alert["subject"]) for alert in result["cost_alerts"]}
    alerts = sub_lake(demo_lake, "alerts", result["start"], result["end"], "time")
    costly = alerts[alerts["kind"].isin(["cost_anomaly", "new_spender"])]
    assert listed == set(zip(costly["kind"], costly["subject"], strict=True))
    spike = next(line for line in seeded.incidents if line.startswith("spend spike"))
    new_key = next(line for line in seeded.incidents if line.startswith("new key"))
    assert any(kind == "cost_anomaly" and key_of(subject) in spike for kind, subject in listed)
    assert any(kind == "new_spender" and key_of(subject) in new_key for kind, subject in listed)
    assert all(alert["impact_usd"] > 0 for alert in result["cost_alerts"])
    assert result["anomaly_plots"] == len(listed)
    assert images(anomaly_review) >= len(listed)


def test_anomaly_review_lists_budgets_over_their_limit(
    anomaly_review: nbformat.NotebookNode, demo_lake: Path
) -> None:
    result = summary(anomaly_review)
    latest = latest_budget_states(demo_lake)

    def subjects(status: str) -> list[list[str]]:
        chosen = latest[latest["status"] == status]
        return sorted(chosen[["budget_id", "subject"]].values.tolist())

    assert sorted(result["budgets_exceeded"]) == subjects("exceeded") != []
    assert sorted(result["budgets_warning"]) == subjects("warning") != []


def test_anomaly_review_puts_quality_beside_cost(
    anomaly_review: nbformat.NotebookNode, demo_lake: Path
) -> None:
    result = summary(anomaly_review)
    calls = sub_lake(demo_lake, "priced", result["start"], result["end"], "end_time")
    calls = calls[calls["status"] == "ok"]
    files = sorted((demo_lake / "evaluations").glob("date=*/*.parquet"))
    judged = pd.concat([pq.read_table(path).to_pandas() for path in files], ignore_index=True)
    judged = judged[judged["name"] == "hallucination"]
    verdicts = judged.groupby("event_id")["score_label"].agg(lambda x: (x == "hallucinated").any())
    joined = calls.join(verdicts.rename("labelled"), on="event_id").dropna(subset=["labelled"])
    model = joined["request_model"].fillna(joined["response_model"])
    rates = joined.groupby(model)["labelled"].mean()

    assert result["quality_label_rate"] == pytest.approx(rates.to_dict(), abs=1e-6)
    assert result["quality_evaluated_calls"] == joined.groupby(model).size().to_dict()
    assert result["worst_quality_model"] == WORST_MODEL
