"""aiokafka client options derived from settings, so every service connects alike."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import BrokerResponseError, KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from tollgate.errors import BrokerError
from tollgate.settings import KafkaSettings


def client_options(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = ssl.create_default_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None
        )
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        )
    return options


def producer_options(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """Durable producer defaults: every replica acknowledges, batches are compressed."""
    return {
        **client_options(kafka, bootstrap_servers),
        "acks": "all",
        "enable_idempotence": kafka.effective_idempotence,
        "compression_type": "zstd",
        "linger_ms": 5,
    }


def refuses_idempotence(kafka: KafkaSettings, error: BaseException) -> bool:
    """Whether ``error``, met starting a producer, is a broker refusing idempotence.

    The embedded broker answers InitProducerId with an error; aiokafka raises it as is.
    """
    return kafka.effective_idempotence and isinstance(error, BrokerResponseError)


def idempotence_refused(bootstrap_servers: str, error: BaseException) -> str:
    """The message for it: what happened, and the setting that fixes it."""
    return (
        f"the broker at {bootstrap_servers} refuses idempotent producers (InitProducerId: "
        f"{error!r}), as the embedded broker does: set TOLLGATE_KAFKA_IDEMPOTENCE=false "
        "(`tollgate broker` prints every setting its clients need)"
    )


async def start_producer(
    producer: AIOKafkaProducer, kafka: KafkaSettings, bootstrap_servers: str
) -> None:
    """Start ``producer``; a broker refusing idempotence is a ``BrokerError`` saying so."""
    try:
        await producer.start()
    except BrokerResponseError as error:
        if not refuses_idempotence(kafka, error):
            raise
        raise BrokerError(idempotence_refused(bootstrap_servers, error)) from None


def consumer_options(kafka: KafkaSettings, bootstrap_servers: str) -> dict[str, Any]:
    """Consumer-group defaults; the session timeout decides how long a join takes."""
    session_ms = int(kafka.effective_session_timeout_s * 1000)
    return {
        **client_options(kafka, bootstrap_servers),
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": max(session_ms // 6, 100),
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
    }


async def read_to_high_watermark(consumer: AIOKafkaConsumer) -> bool:
    """Whether every partition ``consumer`` is assigned has been read up to the high
    watermark its fetches report.

    Not ``end_offsets()``: the embedded broker answers ListOffsets with the start of a
    partition's last record batch plus one, and reading up to that leaves the rest of
    the batch, the newest records, unread.
    """
    assigned = consumer.assignment()
    for tp in assigned:
        end = consumer.highwater(tp)
        if end is None or await consumer.position(tp) < end:
            return False
    return bool(assigned)


LEAVE_TIMEOUT_S = 2.0


async def leave_group(consumer: AIOKafkaConsumer) -> None:
    """Leave ``consumer``'s group now, in its first generation too (call before ``stop``).

    aiokafka leaves a group only past generation 0, which the embedded broker numbers
    first: a member of it that stops still counts until its session times out, and the
    next member to join meets one more rebalance. Stages that start again on a new
    broker stop members of exactly that generation.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or coordinator.generation != 0 or not coordinator.member_id:
        return
    request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
    with contextlib.suppress(KafkaError, TimeoutError):
        await asyncio.wait_for(coordinator._send_req(request), LEAVE_TIMEOUT_S)
