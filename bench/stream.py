"""Stream figures: worker throughput, enforcement lag, and budget overshoot, in one run.

1. Throughput: N usage events are produced up front; one ``tollgate worker`` meters,
   prices and keeps three budgets for each (three contributions an event). Baseline in the
   same run: a bare aiokafka consumer that only reads and decodes the same events.
2. Enforcement lag: probe calls are produced one by one; the lag is the time from a call's
   usage event reaching the broker to the budget state that counts it arriving at a reader
   configured as the gateway's budget feed is.
3. Overshoot: 64 concurrent streaming calls through a real gateway (in front of the fake
   provider) drain a token budget; overshoot is how far the spend the stream finally
   counts goes past the limit.

Run: .venv/bin/python bench/stream.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    BIN,
    cpu_seconds,
    percentile,
    start_process,
    stop_process,
    wait_ready,
)
from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.contract import BudgetState, Operation, Status, UsageEvent, decode, encode
from tollgate.ids import uuid7
from tollgate.kafka import consumer_options, producer_options
from tollgate.settings import KafkaSettings

KEY = "sk-bench-stream-0123456789"
LIMIT_TOKENS = 60_000
BUDGETS = [
    {"id": "tenant-hour", "scope": {"tenant": "*"}, "window": {"rolling": "1h"},
     "limit_tokens": 10**12},
    {"id": "team-day", "scope": {"tenant": "*", "team": "*"},
     "window": {"calendar": "day"}, "limit_usd": "1000000"},
    {"id": "model-minute", "scope": {"request_model": "*"}, "window": {"rolling": 60},
     "limit_tokens": 10**12},
    {"id": "overshoot", "scope": {"tenant": "overshoot"}, "window": {"rolling": "1h"},
     "limit_tokens": LIMIT_TOKENS},
]  # fmt: skip
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "o3-mini")


def usage(i: int, tenant: str, tokens: int = 1300) -> UsageEvent:
    end = datetime.now(UTC)
    return UsageEvent(
        event_id=uuid7(),
        time=end - timedelta(milliseconds=800),
        end_time=end,
        tenant=tenant,
        team=f"team-{i % 5}",
        api_key_id=f"key-{i % 50}",
        provider="anthropic" if "claude" in MODELS[i % 4] else "openai",
        operation=Operation.CHAT,
        request_model=MODELS[i % 4],
        input_tokens=tokens - 300,
        output_tokens=300,
        cache_read_input_tokens=i % 200,
        status=Status.OK,
        http_status=200,
        duration_ms=800.0,
    )


async def produce(kafka: KafkaSettings, broker: str, topic: str, events: list[UsageEvent]) -> None:
    producer = AIOKafkaProducer(**{**producer_options(kafka, broker), "linger_ms": 20})
    await producer.start()
    try:
        for chunk_start in range(0, len(events), 5000):
            chunk = events[chunk_start : chunk_start + 5000]
            futures = [
                await producer.send(topic, encode(e), key=(e.tenant or "").encode()) for e in chunk
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def state_reader(kafka: KafkaSettings, broker: str, *topics: str) -> AIOKafkaConsumer:
    """Read budget states as the gateway's feed does: no group, short fetch waits."""
    options = consumer_options(kafka, broker)
    options.update(group_id=None, fetch_max_wait_ms=100)
    return AIOKafkaConsumer(*topics, **options)


async def baseline_read(kafka: KafkaSettings, broker: str, topic: str, count: int) -> float:
    """Events/s of a bare consumer that reads and decodes: the floor under any worker."""
    options = consumer_options(kafka, broker)
    options["group_id"] = None
    consumer = AIOKafkaConsumer(topic, **options)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in records:
                    decode(record.value, UsageEvent)
                seen += len(records)
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - started)


TENANTS = [f"tenant-{i}" for i in range(20)]


async def throughput(kafka, broker, topics, worker, events) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Events/s and CPU per event of the worker, from its first output (a priced event or
    a budget state) to the budget state that counts the last event."""
    count = len(events)
    expected = {t: sum(e.total_tokens for e in events if e.tenant == t) for t in TENANTS}
    tenants = TENANTS
    reader = state_reader(kafka, broker, topics.budget_state, topics.priced)
    await reader.start()
    try:
        latest: dict[str, int] = {}
        first_at = cpu_before = None
        while any(latest.get(f"tenant={t}") != expected[t] for t in tenants):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited ({worker.returncode}); see its log")
            for tp, records in (await reader.getmany(timeout_ms=500)).items():
                if records and first_at is None:
                    first_at, cpu_before = time.perf_counter(), cpu_seconds(worker.pid)
                if tp.topic != topics.budget_state:
                    continue
                for record in records:
                    state = decode(record.value, BudgetState)
                    if state.budget_id == "tenant-hour":
                        latest[state.subject] = state.spent_tokens
        assert first_at is not None
        assert cpu_before is not None
        elapsed = time.perf_counter() - first_at
        cpu = cpu_seconds(worker.pid) - cpu_before
    finally:
        await reader.stop()
    return count / elapsed, cpu / count * 1e6


async def enforcement_lag(kafka, broker, topics, probes: int) -> list[float]:  # type: ignore[no-untyped-def]
    reader = state_reader(kafka, broker, topics.budget_state)
    await reader.start()
    producer = AIOKafkaProducer(**{**producer_options(kafka, broker), "linger_ms": 0})
    await producer.start()
    lags: list[float] = []
    spent = -1
    try:
        for i in range(probes):
            event = usage(i, "probe", tokens=1000)
            sent_at = time.perf_counter()
            await producer.send_and_wait(topics.usage, encode(event), key=b"probe")
            target = (i + 1) * 1000
            while spent < target:
                for records in (await reader.getmany(timeout_ms=1000)).values():
                    for record in records:
                        state = decode(record.value, BudgetState)
                        if state.budget_id == "tenant-hour" and state.subject == "tenant=probe":
                            spent = max(spent, state.spent_tokens)
            lags.append((time.perf_counter() - sent_at) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await producer.stop()
        await reader.stop()
    return lags


async def overshoot(gateway: str, kafka, broker, topics) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Stream me fifty tokens for the budget."}],
        "stream": True,
        "max_tokens": 50,
    }
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    served = refused = 0
    async with aiohttp.ClientSession() as session:
        # Until the gateway knows the budget, it fails open: wait for it to know.
        while True:
            async with session.post(
                f"{gateway}/v1/chat/completions", json={**body, "stream": False}, headers=headers
            ) as response:
                await response.read()
                if "x-tollgate-budget" in response.headers:
                    break
            await asyncio.sleep(0.2)

        stop = asyncio.Event()

        async def client() -> None:
            nonlocal served, refused
            while not stop.is_set():
                async with session.post(
                    f"{gateway}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                    if response.status == 429:
                        refused += 1
                        stop.set()
                    else:
                        served += 1

        await asyncio.gather(*(client() for _ in range(64)))
    # Let the stream count everything that was served, then read its final word.
    await asyncio.sleep(3)
    reader = state_reader(kafka, broker, topics.budget_state)
    await reader.start()
    final = 0
    try:
        for records in (await reader.getmany(timeout_ms=3000)).values():
            for record in records:
                state = decode(record.value, BudgetState)
                if state.budget_id == "overshoot":
                    final = max(final, state.spent_tokens)
    finally:
        await reader.stop()
    return final, served, refused


async def bench(count: int, workdir: Path) -> None:
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    kafka = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        idempotence=False,
        session_timeout_s=3,
        partitions=4,
    )
    topics = kafka.topics()
    await ensure_topics(kafka, broker.bootstrap_servers, topics)
    budgets = workdir / "budgets.yaml"
    budgets.write_text(yaml.safe_dump({"budgets": BUDGETS}))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
        "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
        "TOLLGATE_KAFKA_PARTITIONS": "4",
        "TOLLGATE_STREAM_BUDGETS_FILE": str(budgets),
        "TOLLGATE_STREAM_DATA_DIR": str(workdir / "faust"),
        "TOLLGATE_STREAM_WEB_PORT": "0",
        "TOLLGATE_LOG_LEVEL": "warning",
    }
    processes = []
    try:
        baseline_events = [usage(i, f"tenant-{i % 20}") for i in range(count)]
        baseline_topic = topics.usage_dlq  # an empty topic of the same layout, unused here
        await produce(kafka, broker.bootstrap_servers, baseline_topic, baseline_events)
        base_rate = await baseline_read(kafka, broker.bootstrap_servers, baseline_topic, count)

        # The worker starts on a full topic, so the bench's producer does not compete.
        events = [usage(i, TENANTS[i % 20]) for i in range(count)]
        await produce(kafka, broker.bootstrap_servers, topics.usage, events)
        worker = start_process([str(BIN / "tollgate"), "worker"], env, workdir / "worker.log")
        processes.append(worker)
        rate, cpu_us = await throughput(kafka, broker.bootstrap_servers, topics, worker, events)
        print(f"throughput, {count:,} events, 3 budgets each (1 worker, 4 partitions):")
        print(f"  bare consumer (read + decode): {base_rate:>9,.0f} events/s")
        print(
            f"  worker (meter + budgets):      {rate:>9,.0f} events/s  ratio {rate / base_rate:.2f}"
        )
        print(f"  worker CPU per event:          {cpu_us:>9,.0f} µs")

        lags = await enforcement_lag(kafka, broker.bootstrap_servers, topics, 200)
        print("enforcement lag, 200 probes (usage event on the broker → state at a reader):")
        print(
            f"  p50 {percentile(lags, 50):.0f} ms   p90 {percentile(lags, 90):.0f} ms   "
            f"p99 {percentile(lags, 99):.0f} ms   max {max(lags):.0f} ms"
        )

        provider = start_process([str(BIN / "python"), "-m", "tollgate.fake_provider",
                                  "--chunk-delay-ms", "5", "--output-tokens", "50"])  # fmt: skip
        processes.append(provider)
        assert provider.stdout is not None
        provider_url = provider.stdout.readline().split()[-1]
        routes = workdir / "routes.yaml"
        routes.write_text(json.dumps({
            "backends": [{"name": "fake", "kind": "openai", "base_url": provider_url}],
            "models": {"gpt-4o-mini": ["fake"]},
            "auth": {"api_keys": [{"id": "bench", "tenant": "overshoot",
                                   "key_sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
        }))  # fmt: skip
        port = free_port()
        gateway = start_process(
            [str(BIN / "tollgate"), "gateway", "--port", str(port)],
            {**env, "TOLLGATE_GATEWAY_ROUTES_FILE": str(routes),
             "TOLLGATE_GATEWAY_SPOOL_DIR": str(workdir / "spool")},
        )  # fmt: skip
        processes.append(gateway)
        url = f"http://127.0.0.1:{port}"
        await wait_ready(f"{url}/readyz")
        final, served, _ = await overshoot(url, kafka, broker.bootstrap_servers, topics)
        print(f"overshoot, 64 concurrent streaming calls against a {LIMIT_TOKENS:,}-token budget:")
        print(
            f"  spent {final:,} tokens over {served} calls: "
            f"{(final - LIMIT_TOKENS) / LIMIT_TOKENS * 100:+.2f} % of the budget"
        )
    finally:
        for process in reversed(processes):
            stop_process(process)
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-stream-") as workdir:
        asyncio.run(bench(args.events, Path(workdir)))


if __name__ == "__main__":
    main()
