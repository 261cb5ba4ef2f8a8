"""The stream worker as a real process on the real broker: pricing, dedupe, dead letters,
budget state and threshold alerts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest
import yaml
from aiohttp import web

from tests.conftest import Providers
from tests.factories import make_priced, make_usage
from tests.gateway_world import ACME_KEY, routes_for, start_gateway
from tests.own_broker import own_settings, start_own_broker, wait_until
from tests.servers import AppServer
from tests.stream_world import (
    StreamWorker,
    TopicReader,
    produce,
    usage_records,
    worker_env,
    write_budgets,
)
from tollgate.broker import free_port
from tollgate.contract import (
    Alert,
    AlertKind,
    BudgetDefinition,
    BudgetState,
    BudgetStatus,
    BudgetWindow,
    CalendarUnit,
    Dimension,
    PricedEvent,
    UsageEvent,
    WindowKind,
    decode,
    encode,
)
from tollgate.ids import uuid7
from tollgate.lake import priced_to_table, write_parquet
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(150)

NY = "America/New_York"
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
            ) and any(
                s.budget_id == "team-usd" and s.spent_usd == Decimal("0.0400") for s in states_seen
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


async def test_a_budget_spent_through_the_gateway_makes_the_gateway_refuse_the_next_call(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
) -> None:
    budgets = write_budgets(
        tmp_path / "budgets.yaml",
        [
            {
                "budget_id": "acme-small",
                "scope": {"tenant": "acme"},
                "window": {"rolling": "1h"},
                "limit_tokens": 3000,
            }
        ],
    )
    env = worker_env(kafka_settings, broker, tmp_path, TOLLGATE_STREAM_BUDGETS_FILE=str(budgets))
    worker = StreamWorker(env, tmp_path / "worker.log").start()
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    gateway = await asyncio.to_thread(
        start_gateway, kafka_settings, broker, topics, routes, tmp_path / "spool", read=False
    )
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Count to sixteen for the budget, please."}]
    try:
        # Until the worker has joined and counted a first call, no state is known and
        # the gateway fails open; from then on the budget governs.
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, max_tokens=16
            )
            if "x-tollgate-budget" in raw.headers:
                break
            await asyncio.sleep(0.2)
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        used = int(raw.headers["x-token-used"])
        served = 0
        refusal = None
        while refusal is None and served < 100:
            try:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=messages, max_tokens=16
                )
                served += 1
            except openai.RateLimitError as error:
                refusal = error
    finally:
        await client.close()
        await asyncio.to_thread(gateway.stop)
        worker.stop()
    assert refusal is not None, worker.log()
    assert refusal.code == "budget_exceeded"
    assert "acme-small" in refusal.message
    assert int(refusal.response.headers["retry-after"]) > 0
    # Once the budget is known, the gateway's own accounting of the calls the stream
    # has not counted yet stops the tenant at the limit, without overshoot.
    assert served <= remaining // used + 1


async def test_a_worker_killed_under_load_and_restarted_ends_with_exact_totals(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    # A broker of its own: the session broker, by now holding every earlier test's
    # records, makes a restart's rebalance and recovery slower and less predictable.
    kafka_settings = own_settings(kafka_settings, own_broker_port)
    topics = kafka_settings.topics()
    await start_own_broker(own_broker_port, kafka_settings, topics)
    broker = kafka_settings.bootstrap_servers or ""
    budgets = write_budgets(
        tmp_path / "budgets.yaml",
        [
            {
                "budget_id": "per-tenant",
                "scope": {"tenant": "*"},
                "window": {"rolling": "1h"},
                "limit_tokens": 10_000_000,
            },
            {
                "budget_id": "per-model",
                "scope": {"request_model": "*"},
                "window": {"calendar": "day"},
                "limit_usd": "1000",
            },
        ],
    )
    env = worker_env(
        kafka_settings,
        broker,
        tmp_path,
        TOLLGATE_STREAM_BUDGETS_FILE=str(budgets),
        TOLLGATE_LOG_LEVEL="info",  # a restart is worth reading about when it goes wrong
    )
    tenants = ["acme", "globex", "initech", "umbrella", "hooli", "stark"]
    sent: list[UsageEvent] = []
    states = await TopicReader(kafka_settings, broker, topics.budget_state).start()
    worker = StreamWorker(env, tmp_path / "worker.log").start()

    async def traffic(chunks: int) -> None:
        for _ in range(chunks):
            chunk = [
                now_usage(
                    tenant=tenants[i % len(tenants)],
                    input_tokens=500 + i % 7,
                    cache_read_input_tokens=i % 300,
                )
                for i in range(100)
            ]
            sent.extend(chunk)
            await produce(kafka_settings, broker, topics.usage, usage_records(chunk))
            await asyncio.sleep(0.05)

    try:
        await traffic(1)
        await states.wait_for(lambda records: len(records) > 0, timeout_s=60)  # it is running
        load = asyncio.create_task(traffic(30))
        await asyncio.sleep(1.0)
        worker.kill()  # mid-batch, between commits
        killed_after = len(sent)
        worker = StreamWorker(env, tmp_path / "worker.log").start()
        await load
        assert 200 < killed_after < len(sent)
        # The gateway delivered some events twice, too.
        await produce(kafka_settings, broker, topics.usage, usage_records(sent[::50]))

        expected = {
            t: sum(e.input_tokens + e.output_tokens for e in sent if e.tenant == t) for t in tenants
        }

        def settled(records: list) -> bool:
            latest = {}
            for record in records:
                state = _state(record)
                latest[state.subject] = state
            model = latest.get("request_model=gpt-4o")
            return (
                all(
                    latest.get(f"tenant={t}") is not None
                    and latest[f"tenant={t}"].spent_tokens == expected[t]
                    for t in tenants
                )
                and model is not None
                and model.spent_tokens == sum(expected.values())
            )

        try:
            await states.wait_for(settled, timeout_s=60)
        except AssertionError:
            latest = {_state(r).subject: _state(r).spent_tokens for r in states.records}
            raise AssertionError(
                f"totals never settled: {latest} expected {expected}\n{worker.log()[-3000:]}"
            ) from None
        await states.settle(quiet_s=2.0)
    finally:
        worker.stop()
        await states.stop()

    latest: dict[str, BudgetState] = {}
    for record in states.records:
        state = _state(record)
        latest[state.key()] = state
    for tenant in tenants:  # never more than the truth, even briefly
        for record in states.records:
            state = _state(record)
            if state.subject == f"tenant={tenant}":
                assert state.spent_tokens <= expected[tenant]
    model = latest["per-model|request_model=gpt-4o"]
    assert model.spent_tokens == sum(expected.values())


async def test_a_cost_spike_raises_one_anomaly_alert_delivered_to_a_webhook_after_a_failure(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    received: list[Alert] = []
    attempts = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.Response(status=503)  # the receiver is briefly down
        received.append(decode(await request.read(), Alert))
        return web.Response(status=204)

    def receiver_app() -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", receive)
        return app

    receiver = AppServer(receiver_app).start()
    hooks = tmp_path / "webhooks.yaml"
    hooks.write_text(
        yaml.safe_dump({"webhooks": [{"url": f"{receiver.url}/hook", "backoff_initial_s": 0.1}]})
    )
    env = worker_env(kafka_settings, broker, tmp_path, TOLLGATE_STREAM_WEBHOOKS_FILE=str(hooks))
    worker = StreamWorker(env, tmp_path / "worker.log").start()
    alerts = await TopicReader(kafka_settings, broker, topics.alerts).start()
    rng = random.Random(7)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=70)
    steady = []
    for minute in range(60):  # an hour of ordinary spend, two calls a minute
        for second in (10, 40):
            end = start + timedelta(minutes=minute, seconds=second)
            steady.append(
                now_usage(
                    time=end - timedelta(seconds=1),
                    end_time=end,
                    cache_read_input_tokens=0,
                    reasoning_tokens=0,
                    input_tokens=rng.randint(800, 1200),
                    output_tokens=rng.randint(200, 400),
                )
            )
    spike_end = start + timedelta(minutes=61, seconds=20)
    spike = now_usage(
        time=spike_end - timedelta(seconds=5),
        end_time=spike_end,
        api_key_id="acme-batch-job",
        cache_read_input_tokens=0,
        reasoning_tokens=0,
        input_tokens=1_000_000,
        output_tokens=2_000_000,  # about $22.50 of gpt-4o in one minute
    )
    after = [
        now_usage(
            time=start + timedelta(minutes=m, seconds=9),
            end_time=start + timedelta(minutes=m, seconds=10),
            cache_read_input_tokens=0,
            reasoning_tokens=0,
        )
        for m in range(62, 66)
    ]
    try:
        await produce(kafka_settings, broker, topics.usage, usage_records([*steady, spike, *after]))
        await alerts.wait_for(
            lambda r: any(decode(x.value, Alert).kind is AlertKind.COST_ANOMALY for x in r),
            timeout_s=60,
        )
        await alerts.settle(quiet_s=2.0)
        await wait_until(lambda: len(received) >= len(alerts.records), timeout_s=15)
    finally:
        worker.stop()
        await alerts.stop()
        receiver.stop()

    anomalies = [a for a in _alerts(alerts.records) if a.kind is AlertKind.COST_ANOMALY]
    assert len(anomalies) == 1, [a.summary for a in anomalies]
    (anomaly,) = anomalies
    assert anomaly.since == spike_end.replace(second=0)
    assert anomaly.actual_usd is not None
    assert anomaly.expected_usd is not None
    assert anomaly.actual_usd > Decimal(20)
    assert anomaly.expected_usd < Decimal("0.1")
    assert "gpt-4o" in anomaly.summary
    # The key behind it had never spent before: said once, as a new spender.
    (newcomer,) = [a for a in _alerts(alerts.records) if a.kind is AlertKind.NEW_SPENDER]
    assert "acme-batch-job" in newcomer.summary
    assert len(alerts.records) == 2
    assert {a.alert_id for a in received} == {anomaly.alert_id, newcomer.alert_id}
    assert attempts == 3  # one refused by the receiver, retried


async def test_after_the_broker_lost_its_history_budgets_carry_over_from_the_lake(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    """The embedded broker keeps nothing on disk: a new one starts empty, and the spend of
    the open window comes back from the lake's priced events."""
    lake = tmp_path / "lake"
    earlier = datetime.now(UTC) - timedelta(minutes=20)
    history = [
        make_priced(
            event_id=uuid7(),
            time=earlier - timedelta(seconds=1),
            end_time=earlier + timedelta(seconds=i),
            tenant="acme",
            input_tokens=1000,
            cache_read_input_tokens=0,
            output_tokens=300,
            reasoning_tokens=0,
        )
        for i in range(10)
    ]
    history.append(history[0])  # the lake is at-least-once too
    day = earlier.date().isoformat()
    (lake / "priced" / f"date={day}").mkdir(parents=True)
    write_parquet(priced_to_table(history), lake / "priced" / f"date={day}" / "part-0.parquet")
    budgets = write_budgets(tmp_path / "budgets.yaml", BUDGETS)
    env = worker_env(
        kafka_settings,
        broker,
        tmp_path,
        TOLLGATE_STREAM_BUDGETS_FILE=str(budgets),
        TOLLGATE_LAKE_PATH=str(lake),
    )
    worker = StreamWorker(env, tmp_path / "worker.log").start()
    states = await TopicReader(kafka_settings, broker, topics.budget_state).start()
    try:
        # The broker keeps no state: the rebuilt one is published before any new call.
        await states.wait_for(
            lambda r: any(_state(x).budget_id == "acme-tokens" for x in r), timeout_s=60
        )
        await produce(kafka_settings, broker, topics.usage, usage_records([now_usage()]))
        await states.wait_for(
            lambda r: sum(_state(x).budget_id == "acme-tokens" for x in r) == 2, timeout_s=60
        )
        await states.settle()
    finally:
        worker.stop()
        await states.stop()
    rebuilt, state = [_state(r) for r in states.records if _state(r).budget_id == "acme-tokens"]
    assert rebuilt.spent_tokens == 10 * 1300  # ten from the lake, once each
    assert state.spent_tokens == 10 * 1300 + 1300  # and one new
    assert state.status is BudgetStatus.EXCEEDED


async def test_two_workers_share_the_partitions_and_count_every_subject_exactly_once(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, tmp_path: Path
) -> None:
    budgets = write_budgets(
        tmp_path / "budgets.yaml",
        [{"budget_id": "per-team", "scope": {"tenant": "*", "team": "*"},
          "window": {"rolling": "1h"}, "limit_tokens": 10**9}],
    )  # fmt: skip
    port = free_port()
    env = worker_env(kafka_settings, broker, tmp_path, TOLLGATE_STREAM_BUDGETS_FILE=str(budgets))
    first = StreamWorker(
        {**env, "TOLLGATE_STREAM_WEB_PORT": str(port)}, tmp_path / "first.log"
    ).start()
    second = StreamWorker(env, tmp_path / "second.log").start()
    states = await TopicReader(kafka_settings, broker, topics.budget_state).start()
    tenants = [f"tenant-{i}" for i in range(12)]
    sent = [
        now_usage(tenant=tenants[i % 12], team=f"team-{i % 3}", cache_read_input_tokens=0)
        for i in range(600)
    ]
    expected: dict[str, int] = {}
    for event in sent:
        subject = f"tenant={event.tenant},team={event.team}"
        expected[subject] = expected.get(subject, 0) + event.input_tokens + event.output_tokens

    def settled(records: list) -> bool:
        latest = {_state(r).subject: _state(r).spent_tokens for r in records}
        return latest == expected

    try:
        await produce(kafka_settings, broker, topics.usage, usage_records(sent))
        await states.wait_for(settled, timeout_s=90)
        metrics = await asyncio.to_thread(
            lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        )
    finally:
        first.stop()
        second.stop()
        await states.stop()
    assert "tollgate_stream_usage_lag_seconds" in metrics
    # Each worker metered part of the traffic: the first did some, not all.
    metered = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("tollgate_stream_usage_events_total")
        )
    )
    assert 0 < metered < len(sent), first.log()


async def test_budgets_defined_on_the_topic_and_late_events_in_a_zoned_calendar_window(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    """No budgets file: a definition published on the definitions topic is picked up, and
    a late event lands in the New York day it belongs to."""
    kafka_settings = own_settings(kafka_settings, own_broker_port)
    topics = kafka_settings.topics()
    await start_own_broker(own_broker_port, kafka_settings, topics)
    broker = kafka_settings.bootstrap_servers or ""
    definition = BudgetDefinition(
        budget_id="acme-ny-day",
        scope={Dimension.TENANT: "acme"},
        window=BudgetWindow(kind=WindowKind.CALENDAR, unit=CalendarUnit.DAY, timezone=NY),
        limit_usd=Decimal("100"),
    )
    await produce(
        kafka_settings,
        broker,
        topics.budget_definitions,
        [(definition.budget_id.encode(), encode(definition))],
    )
    worker = StreamWorker(worker_env(kafka_settings, broker, tmp_path), tmp_path / "w.log").start()
    states = await TopicReader(kafka_settings, broker, topics.budget_state).start()
    now = datetime.now(UTC)
    late = now - timedelta(minutes=30)
    if late.astimezone(ZoneInfo(NY)).date() != now.astimezone(ZoneInfo(NY)).date():
        late = now - timedelta(seconds=5)  # just after New York's midnight: stay in its day
    try:
        # Definitions apply from when the worker knows them: call until one is counted.
        for _ in range(60):
            await produce(kafka_settings, broker, topics.usage, usage_records([now_usage()]))
            try:
                await states.wait_for(lambda r: len(r) > 0, timeout_s=1)
                break
            except AssertionError:
                continue
        await states.settle(quiet_s=1.5)  # calls sent before the first state was seen
        counted = _state(states.records[-1]).spent_usd
        await produce(
            kafka_settings,
            broker,
            topics.usage,
            usage_records([now_usage(end_time=late, time=late - timedelta(seconds=1))]),
        )
        await states.wait_for(
            lambda r: _state(r[-1]).spent_usd == counted + Decimal("0.0050"), timeout_s=60
        )
    finally:
        worker.stop()
        await states.stop()
    state = [_state(r) for r in states.records][-1]
    assert state.budget_id == "acme-ny-day"
    local_start = state.window_start.astimezone(ZoneInfo(NY))
    assert (local_start.hour, local_start.minute) == (0, 0)
    assert local_start.date() == now.astimezone(ZoneInfo(NY)).date()
    assert state.window_end - state.window_start in (timedelta(hours=h) for h in (23, 24, 25))
