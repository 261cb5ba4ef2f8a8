"""Gateways as real processes (``python -m tollgate.cli gateway``) on the session broker.

For the tests that a promise about budgets must survive: several instances with nothing
but the broker between them, a budgets file, and a reader of the usage events they emit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from aiokafka import AIOKafkaConsumer

from gateway.auth import hash_api_key
from tests.servers import LoopThread
from tollgate.broker import free_port
from tollgate.contract import UsageEvent, decode
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

FRESH_KEY = "sk-fresh-test-0123456789"
OTHER_KEY = "sk-other-test-0123456789"


def write_world(
    directory: Path, openai_url: str, budgets: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """A routes file (one OpenAI backend, tenants ``fresh`` and ``other``) and a budgets file."""
    routes = {
        "backends": [{"name": "openai", "kind": "openai", "base_url": openai_url, "timeout_s": 30}],
        "models": {"gpt-4o-mini": ["openai"]},
        "auth": {
            "api_keys": [
                {"id": "fresh-app", "key_sha256": hash_api_key(FRESH_KEY), "tenant": "fresh"},
                {"id": "other-app", "key_sha256": hash_api_key(OTHER_KEY), "tenant": "other"},
            ]
        },
    }
    routes_file, budgets_file = directory / "routes.yaml", directory / "budgets.yaml"
    routes_file.write_text(yaml.safe_dump(routes))
    budgets_file.write_text(yaml.safe_dump({"budgets": budgets}))
    return routes_file, budgets_file


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_gateways(
    count: int,
    kafka: KafkaSettings,
    routes_file: Path,
    budgets_file: Path,
    directory: Path,
    **gateway_env: str,
) -> list[GatewayProcess]:
    """``count`` gateway processes, returned once every one says it is ready."""
    gateways = []
    for index in range(count):
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers or "",
            "TOLLGATE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "TOLLGATE_KAFKA_PARTITIONS": str(kafka.partitions),
            "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
            "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
            "TOLLGATE_GATEWAY_ROUTES_FILE": str(routes_file),
            "TOLLGATE_STREAM_BUDGETS_FILE": str(budgets_file),
            "TOLLGATE_GATEWAY_SPOOL_DIR": str(directory / f"spool-{index}"),
            "TOLLGATE_LOG_LEVEL": "warning",
            **{f"TOLLGATE_GATEWAY_{name.upper()}": value for name, value in gateway_env.items()},
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "tollgate.cli", "gateway", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(directory / f"gateway-{index}.log", "wb"),  # noqa: SIM115
        )
        gateways.append(GatewayProcess(process, f"http://127.0.0.1:{port}"))
    deadline = time.monotonic() + 60
    while not all(gateway.ready() for gateway in gateways):
        for gateway in gateways:
            if gateway.process.poll() is not None:
                raise AssertionError(f"a gateway exited: see {directory}/gateway-*.log")
        if time.monotonic() > deadline:
            raise AssertionError("the gateways did not get ready in 60 s")
        time.sleep(0.1)
    return gateways


@dataclass
class UsageReader:
    """Reads the usage events of a test's topics, from the beginning."""

    kafka: KafkaSettings
    topics: Topics
    seen: list[UsageEvent] = field(default_factory=list)
    _loop: LoopThread = field(default_factory=LoopThread)
    _consumer: AIOKafkaConsumer | None = None

    def start(self) -> UsageReader:
        async def start() -> None:
            self._consumer = AIOKafkaConsumer(
                self.topics.usage,
                **consumer_options(self.kafka, self.kafka.bootstrap_servers or ""),
                group_id=None,
            )
            await self._consumer.start()

        self._loop.run(start())
        return self

    def events(self, count: int, timeout_s: float = 30.0) -> list[UsageEvent]:
        """Wait until at least ``count`` events have been read; return all read so far."""
        deadline = time.monotonic() + timeout_s
        while len(self.seen) < count and time.monotonic() < deadline:
            self._loop.run(self._poll())
        return list(self.seen)

    async def _poll(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=200)
        for records in batches.values():
            self.seen += [decode(r.value, UsageEvent) for r in records]

    def stop(self) -> None:
        if self._consumer is not None:
            self._loop.run(self._consumer.stop())
        self._loop.stop()
