"""The embedded broker: a real Kafka-protocol round trip, topics up front, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.factories import make_usage
from tollgate.broker import EmbeddedBroker, ensure_topics, free_port
from tollgate.contract import UsageEvent, decode, encode
from tollgate.errors import BrokerError
from tollgate.kafka import client_options, consumer_options, producer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import ALL_TOPICS, Topics


async def test_usage_events_round_trip_through_a_consumer_group(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sent = [make_usage(tenant=tenant) for tenant in ("acme", "globex", "initech") * 10]
    producer = AIOKafkaProducer(**producer_options(kafka_settings, broker))
    await producer.start()
    try:
        for event in sent:
            await producer.send(topics.usage, encode(event), key=event.tenant.encode())
        await producer.flush()
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topics.usage,
        group_id=f"{topics.prefix}round-trip",
        **consumer_options(kafka_settings, broker),
    )
    await consumer.start()
    received: list[UsageEvent] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    received += [decode(record.value, UsageEvent) for record in records]
        await consumer.commit()
    finally:
        await consumer.stop()

    assert sorted(received, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)


async def test_events_of_one_tenant_stay_in_order_on_one_partition(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    sent = [make_usage(tenant="acme", input_tokens=1000 + i) for i in range(20)]
    producer = AIOKafkaProducer(**producer_options(kafka_settings, broker))
    await producer.start()
    try:
        results = [await producer.send_and_wait(topics.usage, encode(e), key=b"acme") for e in sent]
    finally:
        await producer.stop()
    assert len({metadata.partition for metadata in results}) == 1

    consumer = AIOKafkaConsumer(topics.usage, **consumer_options(kafka_settings, broker))
    await consumer.start()
    try:
        seen: list[int] = []
        async with asyncio.timeout(20):
            while len(seen) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen += [decode(r.value, UsageEvent).input_tokens for r in records]
    finally:
        await consumer.stop()
    assert seen == [e.input_tokens for e in sent]


async def test_every_tollgate_topic_is_created_up_front_with_its_layout(
    kafka_settings: KafkaSettings, broker: str
) -> None:
    topics = kafka_settings.topics()
    created = await ensure_topics(kafka_settings, broker, topics)
    assert sorted(created) == sorted(topics.name(spec) for spec in ALL_TOPICS)

    admin = AIOKafkaAdminClient(**client_options(kafka_settings, broker))
    await admin.start()
    try:
        described = await admin.describe_topics([topics.usage, topics.budget_definitions])
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    assert partitions[topics.usage] == kafka_settings.partitions
    assert partitions[topics.budget_definitions] == 1


async def test_creating_topics_twice_creates_nothing_the_second_time(
    kafka_settings: KafkaSettings, broker: str, topics: Topics
) -> None:
    assert await ensure_topics(kafka_settings, broker, topics) == []


def test_state_topics_are_compacted() -> None:
    layout = Topics()
    compacted = {spec.base_name for spec in ALL_TOPICS if layout.configs_of(spec)}
    assert compacted == {
        "tollgate.budget-state.v1",
        "tollgate.budget-definitions.v1",
        "tollgate.meter-seen-ids.v1",  # the stream's changelogs
        "tollgate.budget-subjects.v1",
    }
    for spec in ALL_TOPICS:
        if spec.compacted:
            assert layout.configs_of(spec)["cleanup.policy"] == "compact"


async def test_an_unreachable_broker_is_a_clear_error() -> None:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerError, match="unreachable"):
        await ensure_topics(settings, settings.bootstrap_servers or "", Topics(), timeout_s=1)


def test_the_broker_dies_with_its_parent_even_on_sigkill(tmp_path: os.PathLike[str]) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from tollgate.broker import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.process.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    assert _alive(broker_pid)

    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(broker_pid)


def test_stopping_the_broker_ends_its_process() -> None:
    broker = EmbeddedBroker().start()
    assert broker.process is not None
    broker.stop()
    assert broker.process.poll() is not None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
