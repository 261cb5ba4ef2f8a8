"""Gateway overhead: the fake provider called directly vs. through the gateway, one run.

Three processes share the machine, as they would share a small host: this load generator,
the gateway (``tollgate gateway``, emitting every usage event to an embedded broker), and
the fake provider (``python -m tollgate.fake_provider``, answering at once so that only
overhead is measured). Each scenario alternates direct and gateway rounds, so drift in
the machine's speed hits both alike; medians over the rounds are reported. The CPU time
the serving process spends per call (the provider's when called directly, the gateway's
own otherwise) is the figure least moved by noise.

The bench tenant is under a blocking token budget (from a budgets file, as in production)
far above what the bench spends, so every call pays for its budget check, reservation and
share of the instances' headroom, and none is refused.

At the end the gateway's own metrics must show one usage event per call it served.

Run: .venv/bin/python bench/gateway.py [--rounds 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import BIN, cpu_seconds, start_process, wait_ready
from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.settings import KafkaSettings

KEY = "sk-bench-0123456789"
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Write one short sentence about tollgates."}],
}


@dataclass(frozen=True)
class Scenario:
    concurrency: int
    stream: bool
    requests: int

    @property
    def name(self) -> str:
        return f"c={self.concurrency} {'stream' if self.stream else 'json'}"


@dataclass(frozen=True)
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0
    """CPU time the serving process (provider, or gateway) spent per call."""


async def measured(url: str, scenario: Scenario, pid: int) -> Sample:
    """``run_load``, with the CPU the process ``pid`` spent on it, per call."""
    before = cpu_seconds(pid)
    sample = await run_load(url, scenario)
    cpu_us = (cpu_seconds(pid) - before) / scenario.requests * 1e6
    return Sample(sample.rps, sample.p50_ms, sample.p99_ms, cpu_us)


async def run_load(url: str, scenario: Scenario) -> Sample:
    """``scenario.requests`` calls at fixed concurrency; each timed to its last byte."""
    body = json.dumps({**BODY, "stream": scenario.stream}).encode()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    latencies: list[float] = []
    remaining = scenario.requests
    connector = aiohttp.TCPConnector(limit=scenario.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url} answered {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Sample(
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


async def events_emitted(gateway: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{gateway}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("tollgate_gateway_events_emitted "):
            return float(line.split()[1])
    raise RuntimeError("the gateway's metrics have no tollgate_gateway_events_emitted")


async def bench(rounds: int, scale: float, workdir: Path, only: list[str]) -> None:
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    provider = start_process([str(BIN / "python"), "-m", "tollgate.fake_provider"])
    gateway_process = None
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, idempotence=False)
        await ensure_topics(kafka, broker.bootstrap_servers, kafka.topics())
        assert provider.stdout is not None
        provider_url = provider.stdout.readline().split()[-1]

        routes = workdir / "routes.yaml"
        routes.write_text(
            json.dumps(
                {
                    "backends": [{"name": "fake", "kind": "openai", "base_url": provider_url}],
                    "models": {"gpt-4o-mini": ["fake"]},
                    "auth": {
                        "api_keys": [
                            {
                                "id": "bench",
                                "tenant": "bench",
                                "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                            }
                        ]
                    },
                }
            )
        )
        budgets = workdir / "budgets.yaml"
        budgets.write_text(
            json.dumps(
                {
                    "budgets": [
                        {
                            "id": "bench-tokens",
                            "scope": {"tenant": "bench"},
                            "window": {"rolling": "1h"},
                            "limit_tokens": 10**12,
                        }
                    ]
                }
            )
        )
        port = free_port()
        gateway_process = start_process(
            [str(BIN / "tollgate"), "gateway", "--port", str(port)],
            {
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
                "TOLLGATE_GATEWAY_ROUTES_FILE": str(routes),
                "TOLLGATE_GATEWAY_SPOOL_DIR": str(workdir / "spool"),
                "TOLLGATE_STREAM_BUDGETS_FILE": str(budgets),
            },
        )
        gateway = f"http://127.0.0.1:{port}"
        await wait_ready(f"{gateway}/readyz")

        scenarios = [
            Scenario(1, False, int(400 * scale)),
            Scenario(1, True, int(400 * scale)),
            Scenario(16, False, int(3000 * scale)),
            Scenario(16, True, int(3000 * scale)),
        ]
        if only:
            scenarios = [s for s in scenarios if s.name in only]
        targets = {
            "direct": f"{provider_url}/v1/chat/completions",
            "gateway": f"{gateway}/v1/chat/completions",
        }
        for url in targets.values():  # warm up connections, caches and the JIT-less paths
            await run_load(url, Scenario(4, False, 200))
        served = 200
        servers = {"direct": provider.pid, "gateway": gateway_process.pid}
        print(
            f"{'scenario':<12} {'direct rps':>10} {'gateway rps':>11} {'ratio':>6} "
            f"{'direct p50':>10} {'gateway p50':>11} {'added p50':>9} "
            f"{'direct p99':>10} {'gateway p99':>11} {'provider cpu':>12} {'gateway cpu':>11}"
        )
        for scenario in scenarios:
            samples: dict[str, list[Sample]] = {"direct": [], "gateway": []}
            for round_ in range(rounds):
                order = ["direct", "gateway"] if round_ % 2 == 0 else ["gateway", "direct"]
                for target in order:
                    samples[target].append(
                        await measured(targets[target], scenario, servers[target])
                    )
            served += scenario.requests * rounds
            d, g = (_median(samples[t]) for t in ("direct", "gateway"))
            print(
                f"{scenario.name:<12} {d.rps:>10.0f} {g.rps:>11.0f} {g.rps / d.rps:>6.2f} "
                f"{d.p50_ms:>8.2f}ms {g.p50_ms:>9.2f}ms {g.p50_ms - d.p50_ms:>7.2f}ms "
                f"{d.p99_ms:>8.2f}ms {g.p99_ms:>9.2f}ms "
                f"{d.cpu_us:>8.0f}µs/c {g.cpu_us:>7.0f}µs/c"
            )

        emitted = await wait_for_events(gateway, served)
        print(f"usage events acknowledged by the broker: {emitted:.0f} of {served} calls")
        if emitted != served:
            raise SystemExit("metering lost or duplicated events")
    finally:
        for process in (gateway_process, provider):
            if process is not None:
                process.terminate()
                process.wait(30)
        broker.stop()


async def wait_for_events(gateway: str, expected: int, timeout_s: float = 30) -> float:
    """The gateway's count of acknowledged events, once it reaches ``expected`` or times out."""
    deadline = time.monotonic() + timeout_s
    emitted = await events_emitted(gateway)
    for _ in range(int(timeout_s / 0.2)):
        if emitted >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
        emitted = await events_emitted(gateway)
    return emitted


def _median(samples: list[Sample]) -> Sample:
    return Sample(
        rps=statistics.median(s.rps for s in samples),
        p50_ms=statistics.median(s.p50_ms for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        cpu_us=statistics.median(s.cpu_us for s in samples),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument(
        "--only", action="append", default=[], help='run only this scenario, e.g. "c=16 json"'
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as workdir:
        try:
            import uvloop
        except ImportError:
            asyncio.run(bench(args.rounds, args.scale, Path(workdir), args.only))
        else:
            uvloop.run(bench(args.rounds, args.scale, Path(workdir), args.only))


if __name__ == "__main__":
    main()
