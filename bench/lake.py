"""Lake figures: sink throughput, freshness, and the reporting queries on large lakes.

1. Sink throughput: N priced events are produced up front onto the embedded broker's
   priced topic; a sink in this process (``stream.sink.sink_until``) writes them to a
   fresh lake; events/s from its partitions' assignment to its last write. Baseline in
   the same run: a bare aiokafka consumer that only reads the same records.
2. Freshness: a ``tollgate sink`` process with the default settings (a file at least
   every 5 s); priced events are produced at a steady rate, each stamped with its send
   time; a reader polls the lake through ``analytics.Lake`` every 200 ms, and an event's
   freshness is the time from its send to the first query that returns it.
3. Queries: a synthetic lake (``tollgate seed-lake``) of 10M events over 30 days; each
   reporting question is asked ``--rounds`` times through ``analytics.Lake`` (what the
   reporting API runs); p50 and p90. Baseline in the same run: the headline query (30-day
   spend by team by day) written by hand in DuckDB SQL straight over the files.
   ``--big-events 100000000`` repeats the queries on a 100M-event lake.

Run: .venv/bin/python bench/lake.py [--sink-events 500000] [--lake-events 10000000]
     [--big-events 0] [--rounds 15] [--workdir var/bench-lake]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics import Lake, queries
from analytics.seed import seed_lake
from bench.harness import BIN, median, percentile, start_process, stop_process
from stream.sink import sink_until
from tollgate.broker import EmbeddedBroker, ensure_topics
from tollgate.contract import Operation, PricedEvent, Status, encode
from tollgate.ids import uuid7
from tollgate.kafka import consumer_options, producer_options
from tollgate.settings import KafkaSettings, load_settings

TENANTS = [f"tenant-{i}" for i in range(16)]
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "o3-mini")


def priced(i: int, end: datetime) -> PricedEvent:
    return PricedEvent(
        event_id=uuid7(),
        time=end - timedelta(milliseconds=700),
        end_time=end,
        tenant=TENANTS[i % len(TENANTS)],
        team=f"team-{i % 7}",
        api_key_id=f"key-{i % 97}",
        user=f"user-{i % 211}",
        provider="anthropic" if "claude" in MODELS[i % 4] else "openai",
        operation=Operation.CHAT,
        request_model=MODELS[i % 4],
        response_model=MODELS[i % 4],
        backend="primary",
        input_tokens=1200,
        output_tokens=300,
        cache_read_input_tokens=i % 400,
        status=Status.OK,
        http_status=200,
        duration_ms=700.0,
        streamed=i % 3 == 0,
        input_cost_usd=Decimal("0.0025"),
        output_cost_usd=Decimal("0.003"),
        cost_usd=Decimal("0.0055"),
        price_version="bench",
    )


async def produce(kafka: KafkaSettings, broker: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(**{**producer_options(kafka, broker), "linger_ms": 20})
    await producer.start()
    now = datetime.now(UTC)
    try:
        for start in range(0, count, 5000):
            futures = []
            for i in range(start, min(start + 5000, count)):
                event = priced(i, now)
                futures.append(await producer.send(topic, encode(event), key=event.tenant.encode()))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare_read(kafka: KafkaSettings, broker: str, topic: str, count: int) -> float:
    """Records/s of a consumer that only reads: the floor under any sink."""
    options = consumer_options(kafka, broker)
    options.update(group_id=None, max_partition_fetch_bytes=4 << 20)
    consumer = AIOKafkaConsumer(topic, **options)
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=500, max_records=20000)).values():
                seen += len(records)
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - started)


async def sink_throughput(count: int, workdir: Path) -> dict[str, float]:
    kafka = KafkaSettings(idempotence=False)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topics = kafka.topics()
        await ensure_topics(kafka, bootstrap, topics)
        began = time.perf_counter()
        await produce(kafka, bootstrap, topics.priced, count)
        print(f"  produced {count:,} priced events in {time.perf_counter() - began:.1f} s")
        baseline = await bare_read(kafka, bootstrap, topics.priced, count)
        lake = workdir / "sink-lake"
        shutil.rmtree(lake, ignore_errors=True)
        settings = load_settings(
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
                "TOLLGATE_LAKE_PATH": str(lake),
            }
        )
        run = await sink_until(settings, bootstrap, count)
        rows = (
            duckdb.connect()
            .execute(f"SELECT count(*), count(DISTINCT event_id) FROM '{lake}/priced/*/*.parquet'")
            .fetchone()
        )
        assert rows == (count, count), f"lake holds {rows}, expected {count} distinct rows"
    return {
        "sink_events_per_s": run.rows_per_s,
        "bare_read_per_s": baseline,
        "files": run.files,
    }


async def freshness(rate_per_s: int, seconds: float, workdir: Path) -> list[float]:
    kafka = KafkaSettings(idempotence=False)
    lake_path = workdir / "fresh-lake"
    shutil.rmtree(lake_path, ignore_errors=True)
    lake_path.mkdir(parents=True)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topics = kafka.topics()
        await ensure_topics(kafka, bootstrap, topics)
        sink = start_process(
            [str(BIN / "tollgate"), "sink"],
            {
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
                "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
                "TOLLGATE_LAKE_PATH": str(lake_path),
            },
        )
        try:
            await asyncio.sleep(6)  # the sink joins its group
            sent_at: dict[str, float] = {}
            seen: dict[str, float] = {}
            lake = Lake(lake_path)
            producer = AIOKafkaProducer(**{**producer_options(kafka, bootstrap), "linger_ms": 5})
            await producer.start()

            async def send() -> None:
                i = 0
                began = time.monotonic()
                while time.monotonic() - began < seconds:
                    for _ in range(rate_per_s // 10):
                        event = priced(i, datetime.now(UTC))
                        i += 1
                        sent_at[str(event.event_id)] = time.monotonic()
                        await producer.send(topics.priced, encode(event), key=b"fresh")
                    await asyncio.sleep(0.1)
                await producer.flush()

            async def poll() -> None:
                while len(seen) < len(sent_at) or not sent_at:
                    frame = await asyncio.to_thread(lake.sql, "SELECT event_id FROM priced_usage")
                    now = time.monotonic()
                    for event_id in frame["event_id"]:
                        seen.setdefault(event_id, now)
                    await asyncio.sleep(0.2)

            sending = asyncio.create_task(send())
            await asyncio.wait_for(asyncio.gather(sending, poll()), seconds + 60)
            await producer.stop()
            lake.close()
        finally:
            stop_process(sink)
    return [seen[event_id] - sent for event_id, sent in sent_at.items()]


def time_calls(call: Callable[[], object], rounds: int) -> list[float]:
    call()  # warm: file metadata cached, as in a running API
    timings = []
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        timings.append((time.perf_counter() - began) * 1000)
    return timings


def ensure_lake(path: Path, events: int) -> tuple[datetime, float | None]:
    """A seeded lake of ``events`` at ``path`` (kept between runs); its end, seed time."""
    stamp = path / "seed.json"
    if stamp.exists():
        meta = json.loads(stamp.read_text())
        if meta["events"] == events:
            return datetime.fromisoformat(meta["end"]), None
    shutil.rmtree(path, ignore_errors=True)
    end = datetime(2026, 11, 1, tzinfo=UTC)
    summary = seed_lake(path, events, days=30, end=end, seed=1)
    stamp.write_text(json.dumps({"events": events, "end": end.isoformat()}))
    return end, summary.seconds


def query_figures(path: Path, events: int, rounds: int) -> dict[str, dict[str, float]]:
    end, seeded_s = ensure_lake(path, events)
    if seeded_s is not None:
        print(f"  seeded {events:,} events in {seeded_s:.1f} s")
    start = end - timedelta(days=30)
    lake = Lake(path)
    asks: dict[str, Callable[[], object]] = {
        "spend by team by day, 30 d (UTC)": lambda: lake.frame(
            queries.spend(start, end, group_by=["team"], granularity="day")
        ),
        "spend by team by day, 30 d (Europe/Berlin)": lambda: lake.frame(
            queries.spend(start, end, group_by=["team"], granularity="day", tz="Europe/Berlin")
        ),
        "spend by model by hour, 7 d": lambda: lake.frame(
            queries.spend(end - timedelta(days=7), end, group_by=["model"], granularity="hour")
        ),
        "top 10 keys, 30 d": lambda: lake.frame(
            queries.top_spenders(start, end, by="api_key_id", n=10)
        ),
        "unit costs by model, 30 d": lambda: lake.frame(
            queries.unit_costs(start, end, group_by=["model"])
        ),
        "cache savings by model, 30 d": lambda: lake.frame(
            queries.cache_savings(start, end, group_by=["model"])
        ),
        "errors by status, 30 d": lambda: lake.frame(queries.errors(start, end)),
        "one tenant's spend by day, 30 d": lambda: lake.frame(
            queries.spend(start, end, granularity="day", tenant_scope="tenant-03")
        ),
    }
    figures = {}
    for name, call in asks.items():
        timings = time_calls(call, rounds)
        figures[name] = {"p50_ms": median(timings), "p90_ms": percentile(timings, 90)}
    lake.close()
    con = duckdb.connect()
    glob = str(path / "priced" / "*" / "*.parquet")
    by_hand = (
        "SELECT date_trunc('day', end_time) AS day, team, count(*) AS requests, "
        "sum(input_tokens + output_tokens) AS tokens, sum(cost_usd) AS cost "
        f"FROM read_parquet('{glob}', hive_partitioning = true) "
        "WHERE end_time >= ? AND end_time < ? GROUP BY ALL ORDER BY ALL"
    )
    timings = time_calls(lambda: con.execute(by_hand, [start, end]).df(), rounds)
    figures["baseline: same query by hand in DuckDB SQL"] = {
        "p50_ms": median(timings),
        "p90_ms": percentile(timings, 90),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sink-events", type=int, default=500_000)
    parser.add_argument("--fresh-rate", type=int, default=2000, help="events/s")
    parser.add_argument("--fresh-seconds", type=float, default=20)
    parser.add_argument("--lake-events", type=int, default=10_000_000)
    parser.add_argument("--big-events", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tollgate-bench-lake-"))
    workdir.mkdir(parents=True, exist_ok=True)

    print(f"1. sink throughput ({args.sink_events:,} priced events)")
    sink = asyncio.run(sink_throughput(args.sink_events, workdir))
    print(
        f"  sink {sink['sink_events_per_s']:,.0f} events/s ({sink['files']:.0f} files) · "
        f"bare consumer {sink['bare_read_per_s']:,.0f} records/s · "
        f"ratio {sink['sink_events_per_s'] / sink['bare_read_per_s']:.2f}"
    )

    print(f"2. freshness ({args.fresh_rate}/s for {args.fresh_seconds:.0f} s)")
    lags = asyncio.run(freshness(args.fresh_rate, args.fresh_seconds, workdir))
    print(
        f"  event → queryable: p50 {median(lags):.2f} s · p99 {percentile(lags, 99):.2f} s · "
        f"max {max(lags):.2f} s over {len(lags):,} events"
    )

    sizes = [args.lake_events] + ([args.big_events] if args.big_events else [])
    for n, events in enumerate(sizes, start=3):
        print(f"{n}. reporting queries on a {events:,}-event lake ({args.rounds} rounds)")
        figures = query_figures(workdir / f"lake-{events}", events, args.rounds)
        for name, figure in figures.items():
            print(f"  {name:<45} p50 {figure['p50_ms']:7.0f} ms · p90 {figure['p90_ms']:7.0f} ms")
    subprocess.run(["du", "-sh", *map(str, sorted(workdir.glob("lake-*")))], check=False)


if __name__ == "__main__":
    main()
