"""A running gateway in front of fake providers, on the session broker.

Builds the world the gateway tests state facts about: two fake OpenAI-compatible
backends and a fake Anthropic one, each a real HTTP server; the gateway itself served
on loopback; API keys for two tenants; and a reader of the usage events the gateway
emits to its topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from gateway.app import GatewayParts, create_app
from gateway.auth import hash_api_key
from gateway.routes import RoutesConfig
from tests.servers import AppServer, LoopThread
from tollgate.contract import BudgetState, UsageEvent, decode, encode
from tollgate.kafka import consumer_options, producer_options
from tollgate.settings import GatewaySettings, KafkaSettings, Settings
from tollgate.topics import Topics

ACME_KEY = "sk-acme-test-0123456789"
GLOBEX_KEY = "sk-globex-test-0123456789"
LIMITED_KEY = "sk-limited-test-0123456789"


def routes_for(
    openai_urls: list[str], anthropic_url: str, *, timeout_s: float = 2.0, **auth: Any
) -> RoutesConfig:
    """Backends ``openai-0``, ``openai-1``... by priority, and ``anthropic``; three API keys."""
    backends = [
        {
            "name": f"openai-{i}",
            "kind": "openai",
            "base_url": url,
            "priority": i,
            "timeout_s": timeout_s,
            "connect_timeout_s": 1.0,
        }
        for i, url in enumerate(openai_urls)
    ]
    backends.append(
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": anthropic_url,
            "timeout_s": timeout_s,
        }
    )
    openai_names = [b["name"] for b in backends[:-1]]
    return RoutesConfig.model_validate(
        {
            "backends": backends,
            "models": {
                "gpt-4o-mini": openai_names,
                "text-embedding-3-small": openai_names,
                "claude-sonnet-4": ["anthropic"],
            },
            "auth": {
                "api_keys": [
                    {
                        "id": "acme-app",
                        "key_sha256": hash_api_key(ACME_KEY),
                        "tenant": "acme",
                        "team": "search",
                        "user": "ada",
                    },
                    {
                        "id": "globex-app",
                        "key_sha256": hash_api_key(GLOBEX_KEY),
                        "tenant": "globex",
                        "allowed_models": ["claude-sonnet-4"],
                    },
                    {
                        "id": "limited-app",
                        "key_sha256": hash_api_key(LIMITED_KEY),
                        "tenant": "initech",
                        "rate_limit": {"calls": 3, "renewal_period_s": 60},
                    },
                ],
                **auth,
            },
        }
    )


@dataclass
class GatewayWorld:
    kafka: KafkaSettings
    broker: str
    topics: Topics
    server: AppServer
    seen: list[UsageEvent] = field(default_factory=list)
    _reader: LoopThread = field(default_factory=LoopThread)
    _consumer: AIOKafkaConsumer | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start_reading(self) -> None:
        async def start() -> None:
            self._consumer = AIOKafkaConsumer(
                self.topics.usage, **consumer_options(self.kafka, self.broker)
            )
            await self._consumer.start()

        self._reader.run(start())

    def events(
        self, count: int, where: Callable[[UsageEvent], bool] = lambda e: True, timeout_s=15.0
    ) -> list[UsageEvent]:
        """Wait until ``count`` emitted usage events match ``where``; return those."""
        deadline = time.monotonic() + timeout_s
        while True:
            matching = [e for e in self.seen if where(e)]
            if len(matching) >= count or time.monotonic() > deadline:
                return matching
            self._reader.run(self._poll())

    def event_for(self, request_id: str, timeout_s: float = 15.0) -> UsageEvent:
        found = self.events(1, lambda e: str(e.event_id) == request_id, timeout_s)
        assert found, f"no usage event with id {request_id}"
        return found[0]

    async def _poll(self) -> None:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=200)
        for records in batches.values():
            self.seen += [decode(r.value, UsageEvent) for r in records]

    def publish_state(self, state: BudgetState) -> None:
        async def publish() -> None:
            producer = AIOKafkaProducer(**producer_options(self.kafka, self.broker))
            await producer.start()
            try:
                await producer.send_and_wait(
                    self.topics.budget_state, encode(state), key=state.key().encode()
                )
            finally:
                await producer.stop()

        self._reader.run(publish())

    def stop(self) -> None:
        if self._consumer is not None:
            self._reader.run(self._consumer.stop())
        self._reader.stop()
        self.server.stop()


def start_gateway(
    kafka: KafkaSettings,
    broker: str,
    topics: Topics,
    routes: RoutesConfig,
    spool_dir: Path,
    read: bool = True,
    secrets: dict[str, str] | None = None,
    **gateway: Any,
) -> GatewayWorld:
    """Serve a gateway on loopback; with ``read``, also read back what it emits."""
    settings = Settings(
        kafka=kafka,
        gateway=GatewaySettings(spool_dir=spool_dir, **gateway),
    )
    parts = GatewayParts(settings, routes, secrets or {}, broker)
    server = AppServer(lambda: create_app(parts)).start()
    world = GatewayWorld(kafka, broker, topics, server)
    if read:
        world.start_reading()
    return world


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
