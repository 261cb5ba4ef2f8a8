"""Faust app settings derived from Tollgate's, tuned for the embedded broker and Kafka.

Tansu completes a consumer-group join only after the session/rebalance timeout, so on
the embedded broker both are a few seconds (a join takes ~3 s instead of Faust's default
minute). Processing is at-least-once: Tansu has no transactions, and every consumer
dedupes by ``event_id`` anyway.
"""

from __future__ import annotations

from typing import Any

import faust

from tollgate.settings import Settings


def faust_options(settings: Settings, bootstrap_servers: str) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``."""
    _limit_fetch_wait(settings.kafka.fetch_max_wait_ms)
    kafka = settings.kafka
    session_s = kafka.effective_session_timeout_s
    options: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",")],
        "broker_session_timeout": session_s,
        "broker_rebalance_timeout": session_s,
        "broker_heartbeat_interval": max(session_s / 6, 0.1),
        "processing_guarantee": "at_least_once",
        "topic_partitions": kafka.partitions,
        "topic_replication_factor": kafka.replication_factor,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        # Agents wait on a batch's deliveries anyway: fuller produce requests cost less.
        "producer_linger": 0.005,
        "store": "memory://",
        "datadir": str(settings.stream.data_dir),
        "web_enabled": False,
    }
    if kafka.sasl_mechanism and kafka.sasl_username and kafka.sasl_password:
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=None,
        )
    return options


def _limit_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Make Faust's consumers use ``fetch_max_wait_ms`` instead of its fixed 1,500 ms.

    Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it. On the embedded broker, which answers a waiting fetch only when the wait is
    over, that is 1.5 s per pipeline hop. The consumer reads the attribute when it starts,
    so it is set on each new consumer before then.
    """
    from faust.transport.drivers import aiokafka as driver

    thread = driver.AIOKafkaConsumerThread
    original = getattr(thread, "_tollgate_original_create", None)
    if original is None:
        original = thread._create_worker_consumer
        thread._tollgate_original_create = original

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        return consumer

    thread._create_worker_consumer = create
