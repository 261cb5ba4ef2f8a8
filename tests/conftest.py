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
from pathlib import Path

import pytest

from tollgate.broker import EmbeddedBroker, ensure_topics
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics


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
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
