"""Budget overshoot across two gateway processes: a fresh budget, and one at 95 %.

Real processes on one machine: the embedded broker (Tansu), ``tollgate worker``,
``tollgate sink``, two ``tollgate gateway`` and the fake provider (``python -m
tollgate.fake_provider``, answering every call with ``--output-tokens`` after
``--latency-ms``). One budgets file holds two blocking budgets of ``--limit`` tokens over a
rolling hour: tenant ``fresh`` (nothing spent; the first burst arrives as soon as the
gateways are ready, before the worker has published anything) and tenant ``warm``
(95 % spent by usage events the worker has counted before its bursts start).

Each scenario sends two bursts 1.5 s apart; a burst is ``--calls`` concurrent chat calls
with ``max_tokens`` 1000, half of them streamed, split evenly over the two gateways. Then
it reads the lake the sink wrote and reports, per scenario:

- overshoot: the scenario tenant's tokens in the lake (every event once) against the limit;
- refusals below 90 %: 429s for the budget issued while the calls admitted before them had
  used less than 90 % of the limit (pre-spend included) — refusals the budget had room for;
- 90 % → first refusal: from the moment the calls admitted so far had used 90 % of the
  limit (for the warm budget: its first call) to the first budget refusal; and whether
  the calls admitted ever used the whole limit (a refusal only once it had would be late).

Run: .venv/bin/python bench/overshoot.py [--calls 64] [--limit 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BIN, start_process, stop_process, wait_ready
from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.contract import (
    BudgetState,
    Operation,
    Status,
    UsageEvent,
    decode,
    encode,
)
from tollgate.ids import uuid7
from tollgate.kafka import producer_options
from tollgate.lake import read_priced
from tollgate.settings import KafkaSettings

KEYS = {"fresh": "sk-bench-fresh-0123456789", "warm": "sk-bench-warm-0123456789"}
MAX_TOKENS = 1000
PRE_SPEND = "bench-pre-spend"
PROMPT = "Tell me everything about tollgates, their history and their economics. " * 3


@dataclass
class Outcome:
    status: int
    started: float


async def one_call(session: aiohttp.ClientSession, url: str, key: str, stream: bool) -> Outcome:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    started = time.time()
    async with session.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
    ) as response:
        await response.read()
        return Outcome(response.status, started)


async def burst(gateways: list[str], key: str, calls: int) -> list[Outcome]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await asyncio.gather(
            *(
                one_call(session, gateways[i % len(gateways)], key, stream=(i // 2) % 2 == 1)
                for i in range(calls)
            )
        )


async def pre_spend(kafka: KafkaSettings, topic: str, tenant: str, tokens: int) -> int:
    """Usage events for ``tenant`` totalling ``tokens``, as a gateway would have sent them."""
    producer = AIOKafkaProducer(**producer_options(kafka, kafka.bootstrap_servers or ""))
    await producer.start()
    count = 0
    try:
        now = datetime.now(UTC) - timedelta(seconds=30)
        while tokens > 0:
            used = min(tokens, 2_500)
            event = UsageEvent(
                event_id=uuid7(),
                time=now,
                end_time=now + timedelta(seconds=1),
                tenant=tenant,
                tags={PRE_SPEND: "yes"},
                provider="openai",
                operation=Operation.CHAT,
                request_model="gpt-4o-mini",
                input_tokens=used // 2,
                output_tokens=used - used // 2,
                status=Status.OK,
                http_status=200,
                duration_ms=1000.0,
            )
            await producer.send(topic, encode(event), key=tenant.encode())
            tokens -= used
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count


async def wait_for_state(
    kafka: KafkaSettings, topic: str, budget_id: str, spent: int, timeout_s: float
) -> float:
    """Seconds until the stream publishes ``budget_id`` at ``spent`` tokens or more."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.value is None:
                        continue
                    state = decode(record.value, BudgetState)
                    if state.budget_id == budget_id and state.spent_tokens >= spent:
                        return time.monotonic() - started
        raise SystemExit(f"no state for {budget_id} at {spent} tokens in {timeout_s:.0f} s")
    finally:
        await consumer.stop()


async def read_usage(kafka: KafkaSettings, topic: str, expected: int) -> list[UsageEvent]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap_servers, group_id=None,
        auto_offset_reset="earliest", fetch_max_wait_ms=100,
    )  # fmt: skip
    await consumer.start()
    events: dict[object, UsageEvent] = {}
    deadline = time.monotonic() + 60
    try:
        while len(events) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(record.value, UsageEvent)
                    events[event.event_id] = event
    finally:
        await consumer.stop()
    return list(events.values())


def lake_tokens(lake: Path, tenant: str) -> tuple[int, int]:
    """(tokens, events) of ``tenant`` in the lake, each event once."""
    seen: dict[str, int] = {}
    for batch in read_priced(lake, columns=["event_id", "tenant", "input_tokens", "output_tokens"]):
        rows = batch.to_pydict()
        for event_id, who, tokens_in, tokens_out in zip(
            rows["event_id"], rows["tenant"], rows["input_tokens"], rows["output_tokens"],
            strict=True,
        ):  # fmt: skip
            if who == tenant:
                seen[str(event_id)] = tokens_in + tokens_out
    return sum(seen.values()), len(seen)


@dataclass
class Report:
    scenario: str
    limit: int
    pre_spent: int
    lake: int
    answered: int
    refused: int
    refused_below_90: int
    to_refusal_s: float | None
    """From the moment admitted calls had used 90 % of the limit to the first refusal."""
    limit_reached: bool

    @property
    def overshoot_pct(self) -> float:
        return (self.lake - self.limit) / self.limit * 100


def analyse(
    scenario: str, tenant: str, events: list[UsageEvent], limit: int, pre_spent: int, lake: int
) -> Report:
    mine = [e for e in events if e.tenant == tenant and PRE_SPEND not in e.tags]
    answered = sorted((e for e in mine if e.status is not Status.REJECTED_BUDGET), key=_start)
    refused = sorted((e for e in mine if e.status is Status.REJECTED_BUDGET), key=_end)

    def used_before(moment: datetime) -> int:
        return pre_spent + sum(e.total_tokens for e in answered if e.time < moment)

    below_90 = sum(1 for r in refused if used_before(r.end_time) < 0.9 * limit)
    # When the calls admitted so far had used 90 % of the limit (the burst's start, when
    # the spend before it was already past 90 %), and when the limit.
    crossed_90 = reached = None
    used = pre_spent
    for event in answered:
        if crossed_90 is None and used >= 0.9 * limit:
            crossed_90 = event.time
        used += event.total_tokens
        if crossed_90 is None and used >= 0.9 * limit:
            crossed_90 = event.time
        if reached is None and used >= limit:
            reached = event.time
    to_refusal = None
    if crossed_90 is not None and refused:
        to_refusal = (refused[0].end_time - crossed_90).total_seconds()
    return Report(
        scenario,
        limit,
        pre_spent,
        lake,
        len(answered),
        len(refused),
        below_90,
        to_refusal,
        reached is not None,
    )


def _start(event: UsageEvent) -> datetime:
    return event.time


def _end(event: UsageEvent) -> datetime:
    return event.end_time


async def bench(args: argparse.Namespace, workdir: Path) -> list[Report]:
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    processes = []
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, idempotence=False)
        topics = kafka.topics()
        await ensure_topics(kafka, broker.bootstrap_servers, topics)
        provider = start_process(
            [
                str(BIN / "python"), "-m", "tollgate.fake_provider",
                "--latency-ms", str(args.latency_ms), "--output-tokens", str(MAX_TOKENS),
            ]
        )  # fmt: skip
        processes.append(provider)
        assert provider.stdout is not None
        provider_url = provider.stdout.readline().split()[-1]
        routes, budgets = workdir / "routes.yaml", workdir / "budgets.yaml"
        routes.write_text(
            json.dumps(
                {
                    "backends": [{"name": "fake", "kind": "openai", "base_url": provider_url}],
                    "models": {"gpt-4o-mini": ["fake"]},
                    "auth": {
                        "api_keys": [
                            {
                                "id": f"{tenant}-app",
                                "tenant": tenant,
                                "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                            }
                            for tenant, key in KEYS.items()
                        ]
                    },
                }
            )
        )
        budgets.write_text(
            json.dumps(
                {
                    "budgets": [
                        {
                            "id": f"{tenant}-tokens",
                            "scope": {"tenant": tenant},
                            "window": {"rolling": "1h"},
                            "limit_tokens": args.limit,
                        }
                        for tenant in KEYS
                    ]
                }
            )
        )
        lake = workdir / "lake"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
            "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
            "TOLLGATE_STREAM_BUDGETS_FILE": str(budgets),
            "TOLLGATE_STREAM_DATA_DIR": str(workdir / "stream"),
            "TOLLGATE_STREAM_WEB_PORT": str(free_port()),
            "TOLLGATE_GATEWAY_ROUTES_FILE": str(routes),
            "TOLLGATE_LAKE_PATH": str(lake),
            "TOLLGATE_LAKE_SINK_ROLL_S": "1",
            "TOLLGATE_LOG_LEVEL": "warning",
        }
        processes.append(
            start_process([str(BIN / "tollgate"), "worker"], env, workdir / "worker.log")
        )
        processes.append(start_process([str(BIN / "tollgate"), "sink"], env, workdir / "sink.log"))
        gateways = []
        for index in range(2):
            port = free_port()
            processes.append(
                start_process(
                    [str(BIN / "tollgate"), "gateway", "--port", str(port)],
                    {**env, "TOLLGATE_GATEWAY_SPOOL_DIR": str(workdir / f"spool-{index}")},
                    workdir / f"gateway-{index}.log",
                )
            )
            gateways.append(f"http://127.0.0.1:{port}")
        for gateway in gateways:
            await wait_ready(f"{gateway}/readyz", 60)

        calls = 0
        # Fresh: at once, before the worker has published anything about it.
        for wave in range(2):
            calls += len(await burst(gateways, KEYS["fresh"], args.calls))
            if wave == 0:
                await asyncio.sleep(1.5)
        pre_spent = int(args.limit * 0.95)
        injected = await pre_spend(kafka, topics.usage, "warm", pre_spent)
        counted_s = await wait_for_state(
            kafka, topics.budget_state, "warm-tokens", pre_spent, timeout_s=120
        )
        print(f"worker counted the warm tenant's 95 % in {counted_s:.1f} s", flush=True)
        await asyncio.sleep(1.0)  # the gateways' cut takes the state after its delay
        for wave in range(2):
            calls += len(await burst(gateways, KEYS["warm"], args.calls))
            if wave == 0:
                await asyncio.sleep(1.5)

        events = await read_usage(kafka, topics.usage, calls + injected)
        expected = {"fresh": 0, "warm": injected}
        for event in events:
            if event.tenant in expected and event.status is not Status.REJECTED_BUDGET:
                expected[event.tenant] += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(lake_tokens(lake, tenant)[1] >= n for tenant, n in expected.items()):
                break
            await asyncio.sleep(1)
        reports = []
        for scenario, tenant, spent in (
            ("fresh budget", "fresh", 0),
            ("at 95 %", "warm", pre_spent),
        ):
            tokens, _ = lake_tokens(lake, tenant)
            reports.append(analyse(scenario, tenant, events, args.limit, spent, tokens))
        return reports
    finally:
        for process in reversed(processes):
            stop_process(process)
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=64, help="calls per burst")
    parser.add_argument("--limit", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=float, default=500)
    parser.add_argument("--keep", type=Path, help="keep logs and the lake in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-overshoot-") as scratch:
        workdir = args.keep or Path(scratch)
        os.makedirs(workdir, exist_ok=True)
        reports = asyncio.run(bench(args, workdir))
    print(
        "\n| scenario | limit | spent before | tokens in the lake | overshoot | answered "
        "| refused | refused below 90 % | 90 % → first refusal | limit reached |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        to_refusal = "—" if r.to_refusal_s is None else f"{r.to_refusal_s:.2f} s"
        print(
            f"| {r.scenario} | {r.limit:,} | {r.pre_spent:,} | {r.lake:,} "
            f"| {r.overshoot_pct:+.2f} % | {r.answered} | {r.refused} | {r.refused_below_90} "
            f"| {to_refusal} | {'yes' if r.limit_reached else 'no'} |"
        )


if __name__ == "__main__":
    main()
