"""Worlds for the tests: a real Kafka-protocol broker, and topics of their own per test.

One broker serves the whole session: the embedded Tansu on a free loopback port, or the
cluster in ``KAFKA_BOOTSTRAP_SERVERS`` if one is given. Each test gets its own topic
prefix, so tests never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.fake_provider import FakeProvider
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

if TYPE_CHECKING:
    from tests.gateway_world import GatewayWorld


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture
def kafka_settings(broker: str) -> KafkaSettings:
    """Client settings for this test's own topics on the session broker."""
    embedded = "KAFKA_BOOTSTRAP_SERVERS" not in os.environ
    return KafkaSettings(
        bootstrap_servers=broker,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=3,
        session_timeout_s=3.0 if embedded else None,
        idempotence=False if embedded else None,
    )


@pytest.fixture
def topics(kafka_settings: KafkaSettings, broker: str) -> Topics:
    """This test's topics, created on the broker."""
    topics = kafka_settings.topics()
    asyncio.run(ensure_topics(kafka_settings, broker, topics))
    return topics


@pytest.fixture
def own_broker_port() -> Iterator[int]:
    """A port for brokers of this test's own (``tests.own_broker``), all killed after."""
    from tests.own_broker import kill_all

    port = free_port()
    yield port
    kill_all(port)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# -- the gateway world -----------------------------------------------------------------------


@dataclass
class Providers:
    """Fake providers behind the gateway: two OpenAI backends (by priority) and Claude."""

    primary: FakeProvider
    spare: FakeProvider
    claude: FakeProvider

    def all(self) -> tuple[FakeProvider, ...]:
        return (self.primary, self.spare, self.claude)


@pytest.fixture(scope="session")
def fake_providers() -> Iterator[Providers]:
    with FakeProvider() as primary, FakeProvider() as spare, FakeProvider() as claude:
        yield Providers(primary, spare, claude)


@pytest.fixture
def providers(fake_providers: Providers) -> Providers:
    """The session's fake providers, back at their start-up config with empty stats."""
    for provider in fake_providers.all():
        provider.reset()
    return fake_providers


@pytest.fixture
def gateway(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> Iterator[GatewayWorld]:
    """A gateway on loopback in front of ``providers``, emitting to this test's topics."""
    from tests.gateway_world import routes_for, start_gateway

    routes = routes_for(
        [providers.primary.base_url, providers.spare.openai_base_url], providers.claude.base_url
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world
    world.stop()
