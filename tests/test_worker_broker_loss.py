"""A worker and a sink that keep running while the embedded broker is SIGKILLed and
started again at the same address: budgets carry the spend from before, and what comes
again (a gateway resending what the dead broker acknowledged) is neither counted nor
written to the lake a second time."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from tests.factories import make_usage
from tests.own_broker import kill, own_settings, start_own_broker
from tests.stream_world import (
    REPO,
    StreamWorker,
    TopicReader,
    produce,
    usage_records,
    worker_env,
    write_budgets,
)
from tollgate.broker import EmbeddedBroker
from tollgate.contract import BudgetState, UsageEvent, decode
from tollgate.ids import uuid7
from tollgate.lake import read_priced
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(240)

TENANTS = ("acme", "globex", "initech")
BUDGETS = [
    {
        "budget_id": "per-tenant",
        "scope": {"tenant": "*"},
        "window": {"rolling": "1h"},
        "limit_tokens": 100_000_000,
    }
]


class _SinkProcess(StreamWorker):
    """``tollgate sink`` as a child process."""

    def start(self) -> _SinkProcess:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollgate.cli", "sink"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self


@dataclass
class World:
    kafka: KafkaSettings
    topics: Topics
    port: int
    broker: EmbeddedBroker
    lake: Path
    worker: StreamWorker
    sink: _SinkProcess

    @property
    def address(self) -> str:
        return self.kafka.bootstrap_servers or ""

    async def send(self, events: list[UsageEvent]) -> None:
        await produce(self.kafka, self.address, self.topics.usage, usage_records(events))

    async def restart_broker(self) -> None:
        """SIGKILL the broker and start an empty one at the same address."""
        kill(self.broker)
        self.broker = await start_own_broker(self.port, self.kafka, self.topics)

    def logs(self) -> str:
        return f"worker:\n{self.worker.log()[-4000:]}\nsink:\n{self.sink.log()[-3000:]}"


@asynccontextmanager
async def world(kafka_settings: KafkaSettings, port: int, tmp_path: Path) -> AsyncIterator[World]:
    # Tansu creates a topic a client names before it exists, with 4 partitions: a producer
    # that reconnects to the restarted broker before its topics were created does that.
    kafka = own_settings(kafka_settings, port).model_copy(update={"partitions": 4})
    topics = kafka.topics()
    broker = await start_own_broker(port, kafka, topics)
    lake = tmp_path / "lake"
    env = worker_env(
        kafka,
        kafka.bootstrap_servers or "",
        tmp_path,
        TOLLGATE_STREAM_BUDGETS_FILE=str(write_budgets(tmp_path / "budgets.yaml", BUDGETS)),
        TOLLGATE_LAKE_PATH=str(lake),
        TOLLGATE_LAKE_SINK_ROLL_S="0.3",
        TOLLGATE_LOG_LEVEL="info",
    )
    worker = StreamWorker(env, tmp_path / "worker.log").start()
    sink = _SinkProcess(env, tmp_path / "sink.log").start()
    try:
        yield World(kafka, topics, port, broker, lake, worker, sink)
    finally:
        worker.stop()
        sink.stop()


def calls(count: int, seed: int) -> list[UsageEvent]:
    end = datetime.now(UTC)
    return [
        make_usage(
            event_id=uuid7(),
            time=end - timedelta(seconds=2),
            end_time=end - timedelta(milliseconds=count - i),
            tenant=TENANTS[i % len(TENANTS)],
            input_tokens=1000 + (seed * 7 + i) % 500,
            cache_read_input_tokens=0,
            output_tokens=100 + i % 37,
        )
        for i in range(count)
    ]


def tokens_by_tenant(events: list[UsageEvent]) -> dict[str, int]:
    spent: Counter[str] = Counter()
    for event in events:
        spent[event.tenant or ""] += event.input_tokens + event.output_tokens
    return dict(spent)


def lake_rows(lake: Path) -> pa.Table:
    columns = ["event_id", "tenant", "input_tokens", "output_tokens"]
    batches = list(read_priced(lake, columns=columns)) if lake.is_dir() else []
    if not batches:
        return pa.table({name: [] for name in columns})
    return pa.Table.from_batches(batches)


def lake_ids(lake: Path) -> list[str]:
    return lake_rows(lake).column("event_id").to_pylist()


def lake_tokens_by_tenant(lake: Path) -> dict[str, int]:
    rows = lake_rows(lake).to_pylist()
    spent: Counter[str] = Counter()
    for row in rows:
        spent[row["tenant"]] += row["input_tokens"] + row["output_tokens"]
    return dict(spent)


async def wait_for(condition: object, timeout_s: float, what: str, w: World) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not in {timeout_s} s\n{w.logs()}")
        await asyncio.sleep(0.2)


async def latest_states(w: World, expected: dict[str, int], timeout_s: float) -> dict[str, int]:
    """The budget states on the (current) broker once each tenant's says ``expected``,
    read again until quiet (a later, different one would show)."""
    reader = await TopicReader(w.kafka, w.address, w.topics.budget_state).start()

    def spent(records: list) -> dict[str, int]:
        latest: dict[str, int] = {}
        for record in records:
            if record.value is not None:
                state = decode(record.value, BudgetState)
                latest[state.subject.removeprefix("tenant=")] = state.spent_tokens
        return latest

    try:
        try:
            await reader.wait_for(lambda records: spent(records) == expected, timeout_s)
        except AssertionError:
            ids = lake_ids(w.lake)
            raise AssertionError(
                f"budget states {spent(reader.records)} never said {expected}; the lake "
                f"holds {lake_tokens_by_tenant(w.lake)} in {len(ids)} rows, "
                f"{len(set(ids))} events\n{w.logs()}"
            ) from None
        return spent(await reader.settle(quiet_s=2.0))
    finally:
        await reader.stop()


async def test_a_running_worker_rebuilds_its_budgets_from_the_lake_when_the_broker_restarts(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    async with world(kafka_settings, own_broker_port, tmp_path) as w:
        before = calls(300, seed=1)
        await w.send(before)
        await latest_states(w, tokens_by_tenant(before), timeout_s=90)
        await wait_for(lambda: len(lake_ids(w.lake)) >= len(before), 60, "calls in the lake", w)

        await w.restart_broker()
        after = calls(200, seed=2)
        await w.send(after)

        expected = tokens_by_tenant(before + after)
        assert await latest_states(w, expected, timeout_s=120) == expected
        everything = {str(e.event_id) for e in before + after}
        await wait_for(lambda: set(lake_ids(w.lake)) == everything, 60, "every call", w)
        await asyncio.sleep(1.0)  # a second copy would land now
        ids = lake_ids(w.lake)
        assert len(ids) == len(set(ids))
        # The budgets say what the lake holds: spend from before the restart included.
        assert lake_tokens_by_tenant(w.lake) == expected
        assert "the broker lost its history" in w.worker.log()


async def test_events_resent_after_the_broker_restarts_are_counted_and_stored_once(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    async with world(kafka_settings, own_broker_port, tmp_path) as w:
        before = calls(300, seed=3)
        await w.send(before)
        await latest_states(w, tokens_by_tenant(before), timeout_s=90)
        await wait_for(lambda: len(lake_ids(w.lake)) >= len(before), 60, "calls in the lake", w)

        await w.restart_broker()
        # What gateways do after a broker loss: resend what the dead broker acknowledged
        # (the same event ids), then go on with new calls.
        new = calls(200, seed=4)
        await w.send(before[100:] + new[:100])
        await w.send(new[100:] + before[:50])

        expected = tokens_by_tenant(before + new)
        assert await latest_states(w, expected, timeout_s=120) == expected
        everything = {str(e.event_id) for e in before + new}
        await wait_for(lambda: set(lake_ids(w.lake)) == everything, 60, "every call", w)
        await asyncio.sleep(1.5)  # a second copy would land now
        ids = lake_ids(w.lake)
        assert len(ids) == len(everything), Counter(ids).most_common(3)
        assert lake_tokens_by_tenant(w.lake) == expected


async def test_a_broker_killed_under_load_and_everything_resent_ends_with_exact_budgets(
    kafka_settings: KafkaSettings, own_broker_port: int, tmp_path: Path
) -> None:
    """The worst moment: batches in flight in the worker and the sink when the broker
    dies. What the old producer delivers late to the new broker is fenced off; gateways
    resend every call of the outage's last minutes; budgets and lake end exact."""
    async with world(kafka_settings, own_broker_port, tmp_path) as w:
        sent: list[UsageEvent] = []

        async def traffic(chunks: int, seed: int) -> None:
            for chunk in range(chunks):
                events = calls(50, seed=seed * 1000 + chunk)
                sent.extend(events)
                try:
                    await w.send(events)
                except Exception:  # the broker died under it: resent below
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.05)

        first = calls(50, seed=5)
        sent.extend(first)
        await w.send(first)
        await latest_states(w, tokens_by_tenant(first), timeout_s=90)  # the worker is running
        load = asyncio.create_task(traffic(20, seed=6))
        await asyncio.sleep(1.0)
        await w.restart_broker()
        await load
        before = list(sent)
        await w.send(before)  # what the gateways kept, sent again
        await traffic(4, seed=7)

        expected = tokens_by_tenant(sent)
        assert await latest_states(w, expected, timeout_s=120) == expected
        everything = {str(e.event_id) for e in sent}
        await wait_for(lambda: set(lake_ids(w.lake)) == everything, 60, "every call", w)
        await asyncio.sleep(1.5)  # a second copy would land now
        ids = lake_ids(w.lake)
        assert len(ids) == len(everything), Counter(ids).most_common(3)
        assert lake_tokens_by_tenant(w.lake) == expected
