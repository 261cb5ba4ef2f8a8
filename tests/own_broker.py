"""Brokers a test owns: killed and restarted at will, on a port the test keeps.

A killed Tansu forgets everything, so a restarted one is an empty broker on the same
address: what a client meets after a real outage with lost state, the harder case.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from tollgate.broker import EmbeddedBroker, ensure_topics
from tollgate.contract import UsageEvent, decode
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

_own_brokers: dict[int, list[EmbeddedBroker]] = {}


def kill_all(port: int) -> None:
    """Kill every broker started on ``port`` (the ``own_broker_port`` fixture's cleanup)."""
    for broker in _own_brokers.pop(port, []):
        kill(broker)


async def start_own_broker(port: int, kafka: KafkaSettings, topics: Topics) -> EmbeddedBroker:
    broker = EmbeddedBroker(port=port).start()
    _own_brokers.setdefault(port, []).append(broker)
    await ensure_topics(kafka, broker.bootstrap_servers, topics)
    return broker


def kill(broker: EmbeddedBroker) -> None:
    """Crash the broker. (SIGTERM would wait for every client to hang up first.)"""
    if broker.process is not None and broker.process.poll() is None:
        broker.process.kill()
        broker.process.wait()


def own_settings(kafka_settings: KafkaSettings, port: int) -> KafkaSettings:
    return kafka_settings.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{port}", "idempotence": False}
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {condition}")
        await asyncio.sleep(0.02)


async def consume(
    kafka: KafkaSettings, bootstrap_servers: str, topic: str, count: int
) -> list[UsageEvent]:
    """Every event on ``topic`` (at least ``count``), each partition in offset order."""
    consumer = AIOKafkaConsumer(topic, **consumer_options(kafka, bootstrap_servers))
    await consumer.start()
    received: list[UsageEvent] = []
    try:
        async with asyncio.timeout(15):
            while len(received) < count:
                batches = await consumer.getmany(timeout_ms=300)
                for records in batches.values():
                    received += [decode(record.value, UsageEvent) for record in records]
        # One more look, so that a duplicate has a chance to show.
        for records in (await consumer.getmany(timeout_ms=300)).values():
            received += [decode(record.value, UsageEvent) for record in records]
    finally:
        await consumer.stop()
    return received


def assert_exactly_once(received: list[UsageEvent], sent_ids: set[object]) -> None:
    counts = Counter(event.event_id for event in received)
    duplicates = {event_id: n for event_id, n in counts.items() if n > 1}
    assert not duplicates
    assert set(counts) == sent_ids
