"""A stream worker as a real process on the session broker, and the records around it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tollgate.contract import Record, UsageEvent, decode, encode
from tollgate.kafka import consumer_options, producer_options
from tollgate.settings import KafkaSettings

REPO = Path(__file__).resolve().parent.parent


def worker_env(kafka: KafkaSettings, broker: str, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")},
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "TOLLGATE_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "TOLLGATE_KAFKA_PARTITIONS": str(kafka.partitions),
        "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
        "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
        "TOLLGATE_STREAM_DATA_DIR": str(workdir / "faust"),
        "TOLLGATE_STREAM_WEB_PORT": "0",
        "TOLLGATE_LOG_LEVEL": "warning",
        **extra,
    }


@dataclass
class StreamWorker:
    """``tollgate worker`` as a child process; ``kill()`` is SIGKILL, ``stop()`` SIGTERM."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> StreamWorker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tollgate.cli", "worker"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_budgets(path: Path, budgets: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"budgets": budgets}))
    return path


async def produce(
    kafka: KafkaSettings,
    broker: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
) -> None:
    producer = AIOKafkaProducer(**producer_options(kafka, broker))
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def usage_records(events: list[UsageEvent]) -> list[tuple[bytes | None, bytes | None]]:
    return [((e.tenant or "").encode(), encode(e)) for e in events]


@dataclass
class TopicReader:
    """Reads a topic from the start, in the background of the test's own loop calls."""

    kafka: KafkaSettings
    broker: str
    topic: str
    records: list[Any] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicReader:
        options = consumer_options(self.kafka, self.broker)
        options["group_id"] = None
        self._consumer = AIOKafkaConsumer(self.topic, **options)
        await self._consumer.start()
        return self

    async def wait_for(
        self, condition: Callable[[list[Any]], bool], timeout_s: float = 30.0
    ) -> list[Any]:
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while not condition(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.topic}: condition not met in {timeout_s} s "
                    f"({len(self.records)} records)"
                )
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                self.records += records
        return self.records

    async def settle(self, quiet_s: float = 1.0) -> list[Any]:
        """Read until nothing new arrived for ``quiet_s`` (a duplicate would show)."""
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=int(quiet_s * 1000))
            if not batches:
                return self.records
            for records in batches.values():
                self.records += records

    def decoded(self, record_type: type[Record]) -> list[Any]:
        return [decode(r.value, record_type) for r in self.records if r.value is not None]

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
