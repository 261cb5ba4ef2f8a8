"""Quality figures from the lake: rates, means, coverage and cost per good answer, each
checked against pandas on the same Parquet files; latency figures likewise."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analytics import Lake, QueryError
from tests.factories import T0, make_evaluation, make_priced
from tollgate.contract import PricedEvent, Status
from tollgate.lake import (
    EVALUATIONS,
    PRICED,
    evaluations_to_table,
    lake_dates,
    partition_date,
    partition_dir,
    priced_to_table,
    write_parquet,
)

START, END = T0 - timedelta(days=1), T0 + timedelta(days=2)
MODELS = {"gpt-4o-mini": ("openai-0", 0.1), "claude-sonnet-4": ("anthropic", 0.4)}
"""model → (backend, share of its answers a judge finds hallucinated)."""


def _calls(rng: random.Random) -> list[PricedEvent]:
    calls = []
    for i in range(400):
        model = rng.choice(list(MODELS))
        calls.append(
            make_priced(
                time=T0 + timedelta(minutes=7 * i),
                tenant=rng.choice(("acme", "globex")),
                team=rng.choice(("search", "support")),
                request_model=model,
                backend=MODELS[model][0],
                tags={"env": rng.choice(("prod", "dev"))},
                status=Status.OK if i % 25 else Status.UPSTREAM_ERROR,
                output_tokens=300 if i % 25 else 0,
                reasoning_tokens=0,
                output_cost_usd=Decimal("0.0002") * (1 + i % 5),
                ttft_ms=float(50 + i % 30) if i % 2 else None,
                streamed=bool(i % 2),
                duration_ms=float(800 + i % 300),
            )
        )
    return calls


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(19)
    lake = tmp_path_factory.mktemp("quality-lake")
    calls = _calls(rng)
    evaluations = []
    for call in calls:
        if call.status is not Status.OK or rng.random() < 0.3:
            continue  # 70 % coverage of answered calls
        bad = rng.random() < MODELS[call.request_model or ""][1]
        for verdict in range(rng.choice((1, 1, 2))):  # some calls judged twice
            evaluations.append(
                make_evaluation(
                    call,
                    score_label="hallucinated" if bad and verdict == 0 else "grounded",
                    score_value=1.0 if bad else 0.0,
                )
            )
        evaluations.append(
            make_evaluation(call, name="groundedness", score_label=None, score_value=rng.random())
        )
    by_day: dict[object, list[PricedEvent]] = {}
    for call in calls:
        by_day.setdefault(partition_date(call.end_time), []).append(call)
    for day, rows in by_day.items():
        write_parquet(priced_to_table(rows), partition_dir(lake, day) / "calls.parquet")
    days: dict[object, list] = {}
    for evaluation in evaluations:
        days.setdefault(partition_date(evaluation.time), []).append(evaluation)
    for day, rows in days.items():
        write_parquet(
            evaluations_to_table(rows), partition_dir(lake, day, EVALUATIONS) / "e.parquet"
        )
    return lake


@pytest.fixture(scope="module")
def lake(lake_dir: Path) -> Iterator[Lake]:
    with Lake(lake_dir) as opened:
        yield opened


def _read(lake: Path, sub_lake: str) -> pd.DataFrame:
    frames = [
        pq.read_table(path).to_pandas()
        for day in lake_dates(lake, sub_lake)
        for path in partition_dir(lake, day, sub_lake).glob("*.parquet")
    ]
    return pd.concat(frames, ignore_index=True)


def _expected(lake: Path, group: str, name: str, label: str | None) -> pd.DataFrame:
    calls = _read(lake, PRICED)
    calls = calls[calls.status == "ok"].copy()
    calls["cost_usd"] = calls.cost_usd.astype(float)
    calls["model"] = calls.request_model.fillna(calls.response_model)
    evaluations = _read(lake, EVALUATIONS)
    evaluations = evaluations[evaluations.name == name]
    verdicts = evaluations.groupby("event_id").agg(
        evaluations=("evaluation_id", "count"),
        labelled=("score_label", lambda labels: (labels == label).any()),
        score=("score_value", "mean"),
    )
    judged = calls.join(verdicts, on="event_id")
    judged["evaluated"] = judged.evaluations.notna()
    judged["labelled"] = judged.labelled.fillna(False).astype(bool)
    judged["good"] = judged.evaluated & ~judged.labelled
    rows = []
    for key, part in judged.groupby(group):
        evaluated = part[part.evaluated]
        rows.append(
            {
                group: key,
                "calls": len(part),
                "evaluated_calls": len(evaluated),
                "coverage": len(evaluated) / len(part),
                "evaluations": int(part.evaluations.fillna(0).sum()),
                "labelled_calls": int(part.labelled.sum()),
                "label_rate": part.labelled.sum() / len(evaluated),
                "mean_score": evaluated.score.mean(),
                "cost_usd": part.cost_usd.sum(),
                "good_calls": int(part.good.sum()),
                "cost_per_good_answer": evaluated.cost_usd.sum() / part.good.sum(),
            }
        )
    return pd.DataFrame(rows).sort_values(group).reset_index(drop=True)


@pytest.mark.parametrize("group", ["model", "backend", "team"])
def test_the_hallucination_rate_matches_pandas_on_the_same_files(
    lake: Lake, lake_dir: Path, group: str
) -> None:
    got = lake.quality(
        START, END, evaluation="hallucination", label="hallucinated", group_by=[group]
    )
    expected = _expected(lake_dir, group, "hallucination", "hallucinated")

    assert list(got[group]) == list(expected[group])
    for column in expected.columns.drop(group):
        assert got[column].tolist() == pytest.approx(expected[column].tolist()), column


def test_the_worse_model_shows_the_higher_rate(lake: Lake) -> None:
    got = lake.quality(
        START, END, evaluation="hallucination", label="hallucinated", group_by=["model"]
    ).set_index("model")

    assert got.label_rate["claude-sonnet-4"] > 2 * got.label_rate["gpt-4o-mini"]
    assert got.cost_per_good_answer["claude-sonnet-4"] > got.cost_per_good_answer["gpt-4o-mini"]


def test_mean_groundedness_per_tag_matches_pandas(lake: Lake, lake_dir: Path) -> None:
    got = lake.quality(START, END, evaluation="groundedness", tag="env").set_index("tag")
    calls = _read(lake_dir, PRICED)
    calls = calls[calls.status == "ok"]
    scores = _read(lake_dir, EVALUATIONS)
    scores = scores[scores.name == "groundedness"].groupby("event_id").score_value.mean()
    judged = calls.join(scores, on="event_id")
    judged["env"] = judged.tags.map(dict).map(lambda tags: tags["env"])

    for env, part in judged.groupby("env"):
        assert got.mean_score[env] == pytest.approx(part.score_value.mean())
        assert got.evaluated_calls[env] == part.score_value.notna().sum()
    assert got.label_rate.isna().all()


def test_a_tenant_sees_only_its_own_quality(lake: Lake, lake_dir: Path) -> None:
    scoped = lake.quality(START, END, evaluation="hallucination", tenant_scope="acme")
    calls = _read(lake_dir, PRICED)

    assert scoped.calls[0] == ((calls.tenant == "acme") & (calls.status == "ok")).sum()


def test_quality_in_daily_buckets_adds_up_to_the_totals(lake: Lake) -> None:
    daily = lake.quality(START, END, evaluation="hallucination", granularity="day")
    total = lake.quality(START, END, evaluation="hallucination")

    assert daily.calls.sum() == total.calls[0]
    assert daily.evaluated_calls.sum() == total.evaluated_calls[0]
    assert daily.bucket.is_monotonic_increasing


def test_latency_matches_pandas(lake: Lake, lake_dir: Path) -> None:
    got = lake.latency(START, END).set_index("model")
    calls = _read(lake_dir, PRICED)
    calls = calls[calls.status == "ok"].copy()
    calls["speed"] = calls.output_tokens * 1000 / (calls.duration_ms - calls.ttft_ms.fillna(0))

    for model, part in calls.groupby("request_model"):
        assert got.calls[model] == len(part)
        assert got.ttft_ms_p50[model] == pytest.approx(part.ttft_ms.median())
        assert got.output_tokens_per_s_mean[model] == pytest.approx(part.speed.mean())
        assert got.backend[model] == MODELS[model][0]


def test_bad_quality_arguments_are_refused(lake: Lake) -> None:
    with pytest.raises(QueryError, match="evaluation"):
        lake.quality(START, END, evaluation="")
    with pytest.raises(QueryError, match="good_min_score"):
        lake.quality(START, END, evaluation="x", good_min_score="high")  # type: ignore[arg-type]
    with pytest.raises(QueryError, match="dimension"):
        lake.quality(START, END, evaluation="x", group_by=["cost_usd"])
