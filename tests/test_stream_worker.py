"""The stream worker as a real process on the real broker: pricing, dedupe, dead letters,
budget state and threshold alerts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.factories import make_usage
from tests.stream_world import (
    StreamWorker,
    TopicReader,
    produce,
    usage_records,
    worker_env,
    write_budgets,
)
from tollgate.contract import (
    Alert,
    AlertKind,
    BudgetState,
    BudgetStatus,
    PricedEvent,
    UsageEvent,
    decode,
)
from tollgate.ids import uuid7
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(90)

BUDGETS = [
    {
        "budget_id": "acme-tokens",
        "scope": {"tenant": "acme"},
        "window": {"rolling": "1h"},
        "limit_tokens": 10_000,
        "thresholds_pct": [50, 80, 100],
    },
    {
        "budget_id": "team-usd",
        "scope": {"tenant": "acme", "team": "*"},
        "window": {"calendar": "day", "timezone": "UTC"},
        "limit_usd": "1.00",
    },
]


@pytest.fixture
def worker(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> Iterator[StreamWorker]:
    budgets = write_budgets(tmp_path / "budgets.yaml", BUDGETS)
    env = worker_env(kafka_settings, broker, tmp_path, TOLLGATE_STREAM_BUDGETS_FILE=str(budgets))
    running = StreamWorker(env, tmp_path / "worker.log").start()
    yield running
    running.stop()


def now_usage(**fields: object) -> UsageEvent:
    end = datetime.now(UTC)
    defaults: dict[str, object] = {
        "event_id": uuid7(),
        "time": end - timedelta(seconds=1),
        "end_time": end,
        "tenant": "acme",
        "team": "search",
        "provider": "openai",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06",
        "input_tokens": 1000,
        "cache_read_input_tokens": 400,
        "output_tokens": 300,
        "reasoning_tokens": 120,
    }
    defaults.update(fields)
    return make_usage(**defaults)


async def test_events_are_priced_deduplicated_and_poison_goes_to_the_dlq(
    worker: StreamWorker, kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    events = [now_usage() for _ in range(5)]
    records = usage_records(events)
    records.insert(2, (b"acme", b'{"schema_version": 1, "event_id": "not-a-uuid"}'))
    records.append(records[0])  # the gateway delivered the first one twice
    priced = await TopicReader(kafka_settings, broker, topics.priced).start()
    dead = await TopicReader(kafka_settings, broker, topics.usage_dlq).start()
    try:
        await produce(kafka_settings, broker, topics.usage, records)
        await priced.wait_for(lambda r: len(r) >= 5, timeout_s=60)
        await dead.wait_for(lambda r: len(r) >= 1)
        await priced.settle()
    finally:
        await priced.stop()
        await dead.stop()

    out = priced.decoded(PricedEvent)
    assert sorted(e.event_id for e in out) == sorted(e.event_id for e in events)
    for event in out:
        # gpt-4o: 600 uncached in at $2.50/M, 400 cached at $1.25/M, 300 out at $10/M.
        assert event.input_cost_usd == Decimal("0.0015")
        assert event.cache_read_cost_usd == Decimal("0.0005")
        assert event.output_cost_usd == Decimal("0.0030")
        assert event.cost_usd == Decimal("0.0050")
        assert event.price_version.startswith("openai/gpt-4o@")
    (poison,) = dead.records
    headers = dict(poison.headers)
    assert b"event_id" in headers["tollgate-error"]
    assert poison.value == records[2][1]


async def test_a_spent_budget_is_published_as_exceeded_with_one_alert_per_threshold(
    worker: StreamWorker, kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    states = await TopicReader(kafka_settings, broker, topics.budget_state).start()
    alerts = await TopicReader(kafka_settings, broker, topics.alerts).start()
    try:
        # 1,300 tokens a call: the 10,000-token budget is spent by the 8th.
        for _ in range(4):
            await produce(
                kafka_settings, broker, topics.usage, usage_records([now_usage() for _ in range(2)])
            )

        def exceeded(records: list) -> bool:
            states_seen = [_state(r) for r in records]
            return any(
                s.budget_id == "acme-tokens" and s.status is BudgetStatus.EXCEEDED
                for s in states_seen
            )

        await states.wait_for(exceeded, timeout_s=60)
        await alerts.wait_for(
            lambda r: len([a for a in _alerts(r) if a.budget_id == "acme-tokens"]) >= 3
        )
        await alerts.settle()
    finally:
        await states.stop()
        await alerts.stop()

    last = [_state(r) for r in states.records if _state(r).budget_id == "acme-tokens"][-1]
    assert last.spent_tokens == 8 * 1300
    assert last.limit_tokens == 10_000
    assert last.reset_at is not None
    assert last.subject == "tenant=acme"
    crossings = sorted(
        a.threshold_pct
        for a in _alerts(alerts.records)
        if a.kind is AlertKind.BUDGET_THRESHOLD and a.budget_id == "acme-tokens"
    )
    assert crossings == [50, 80, 100]
    team = [_state(r) for r in states.records if _state(r).budget_id == "team-usd"][-1]
    assert team.subject == "tenant=acme,team=search"
    assert team.spent_usd == Decimal("0.0400")


def _state(record: object) -> BudgetState:
    return decode(record.value, BudgetState)  # type: ignore[attr-defined]


def _alerts(records: list) -> list[Alert]:
    return [decode(r.value, Alert) for r in records]
