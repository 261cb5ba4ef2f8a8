"""Evaluations into the lake: the sink writes their topic to ``<lake>/evaluations``, each
record once, and ``evaluated_usage`` joins them to the priced calls they judge."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from analytics import Lake
from tests.factories import T0, make_evaluation, make_priced
from tests.test_sink import (
    lake_table,
    priced_records,
    produce,
    running_sink,
    sink_settings,
    until_rows,
)
from tollgate.contract import encode
from tollgate.lake import EVALUATIONS, PRICED, evaluations_to_table, partition_dir
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(90)


async def test_evaluations_land_in_their_sub_lake_once_and_join_their_calls(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    calls = [make_priced(time=T0 + timedelta(minutes=i), tenant=("acme", "globex")[i % 2])
             for i in range(6)]  # fmt: skip
    evaluations = [make_evaluation(call) for call in calls]
    evaluations += [make_evaluation(calls[0], score_label="hallucinated", score_value=1.0)]
    stranger = make_evaluation(calls[1], tenant="initech")  # names globex's call
    records = [(e.tenant.encode(), encode(e)) for e in [*evaluations, stranger]]
    places = await produce(kafka_settings, broker, topics.evaluations, records + records[:2])
    await produce(kafka_settings, broker, topics.priced, priced_records(calls))
    lake = tmp_path / "lake"

    async with running_sink(sink_settings(kafka_settings, lake), broker):
        await until_rows(lake, len(calls), PRICED)
        await until_rows(lake, len(evaluations) + 1, EVALUATIONS)

    written = lake_table(lake, EVALUATIONS)
    expected = evaluations_to_table(
        [*evaluations, stranger], [(topics.evaluations, p, o) for p, o in places[:8]]
    )
    assert written.sort_by("evaluation_id").equals(expected.sort_by("evaluation_id"))
    day = partition_dir(lake, (T0 + timedelta(minutes=1)).date(), EVALUATIONS)
    assert day.is_dir()
    with Lake(lake) as opened:
        joined = opened.sql(
            "SELECT event_id, tenant, evaluation_name, score_label, cost_usd, model "
            "FROM evaluated_usage ORDER BY evaluated_at"
        )
    assert len(joined) == len(evaluations)  # initech's evaluation reaches no call
    assert set(joined.event_id) == {str(call.event_id) for call in calls}
    assert (joined.score_label == "hallucinated").sum() == 1
    assert joined.cost_usd.gt(0).all()
