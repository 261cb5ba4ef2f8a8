"""A Faust app configured from Tollgate's settings joins the embedded broker in seconds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.factories import make_usage
from tollgate.contract import encode
from tollgate.kafka import client_options, consumer_options, producer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics


@pytest.fixture
def echo_topic(kafka_settings: KafkaSettings, broker: str, topics: Topics) -> str:
    async def create() -> str:
        name = f"{topics.prefix}test.echo"
        admin = AIOKafkaAdminClient(**client_options(kafka_settings, broker))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        return name

    return asyncio.run(create())


@pytest.fixture
def counter_worker(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, repo_root: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], float, Path]]:
    """The usage-counter Faust app as a real worker process, configured by environment."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")},
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "TOLLGATE_KAFKA_TOPIC_PREFIX": topics.prefix,
        "TOLLGATE_KAFKA_PARTITIONS": str(kafka_settings.partitions),
        "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
        "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
        "TOLLGATE_STREAM_DATA_DIR": str(tmp_path / "faust"),
    }
    log = tmp_path / "worker.log"
    started = time.monotonic()
    with log.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.usage_counter", "worker", "-l", "warn"],
            cwd=repo_root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    yield worker, started, log
    worker.terminate()
    worker.wait(15)


async def test_a_faust_app_joins_in_seconds_and_counts_every_event(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    echo_topic: str,
    counter_worker: tuple[subprocess.Popen[bytes], float, Path],
) -> None:
    worker, started, log = counter_worker
    sent = [make_usage(tenant=t) for t in ["acme", "globex", "acme", "acme", "globex"]]
    producer = AIOKafkaProducer(**producer_options(kafka_settings, broker))
    await producer.start()
    for event in sent:
        await producer.send(topics.usage, encode(event), key=event.tenant.encode())
    await producer.stop()

    consumer = AIOKafkaConsumer(echo_topic, **consumer_options(kafka_settings, broker))
    await consumer.start()
    replies: list[str] = []
    try:
        async with asyncio.timeout(25):
            while len(replies) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    replies += [r.value.decode() for r in records]
                assert worker.poll() is None, log.read_text()[-3000:]
        elapsed_s = time.monotonic() - started
    finally:
        await consumer.stop()

    tenant_of = {str(e.event_id): e.tenant for e in sent}
    counts: dict[str, list[int]] = {}
    for reply in replies:
        event_id, count = reply.split()
        counts.setdefault(tenant_of[event_id], []).append(int(count))
    assert sorted(tenant_of) == sorted(reply.split()[0] for reply in replies)
    assert sorted(counts["acme"]) == [1, 2, 3]
    assert sorted(counts["globex"]) == [1, 2]
    # Faust's defaults make the first join take a minute on Tansu; tuned, it is seconds.
    assert elapsed_s < 25
