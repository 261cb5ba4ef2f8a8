"""The demo's narrator: prints every alert and every spent budget as the stream raises them.

``python -m tollgate.demo.watch`` reads ``tollgate.alerts.v1`` and
``tollgate.budget-state.v1`` from their ends, without a consumer group (it commits
nothing and takes no partition from anyone), and prints one line per alert and one per
budget subject the first time it reaches ``exceeded``.
"""

from __future__ import annotations

import asyncio
import signal

from aiokafka import AIOKafkaConsumer

from tollgate.contract import Alert, BudgetState, BudgetStatus, decode
from tollgate.errors import ContractError
from tollgate.kafka import consumer_options
from tollgate.settings import load_settings


def describe_alert(alert: Alert) -> str:
    return f"ALERT  [{alert.kind.value} · {alert.severity.value}] {alert.summary}"


def describe_exceeded(state: BudgetState) -> str:
    spent = f"${state.spent_usd:.2f}" if state.limit_usd is not None else f"{state.spent_tokens}"
    limit = f"${state.limit_usd:.2f}" if state.limit_usd is not None else f"{state.limit_tokens}"
    return (
        f"BUDGET {state.budget_id} ({state.subject}) spent: {spent} of {limit}; "
        f"{'calls are refused (429)' if state.action.value == 'block' else 'alert only'}"
    )


async def watch() -> None:
    settings = load_settings()
    if settings.kafka.bootstrap_servers is None:
        raise SystemExit("the watcher needs KAFKA_BOOTSTRAP_SERVERS")
    topics = settings.kafka.topics()
    options = consumer_options(settings.kafka, settings.kafka.bootstrap_servers)
    options["auto_offset_reset"] = "latest"
    consumer = AIOKafkaConsumer(topics.alerts, topics.budget_state, **options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    exceeded: set[str] = set()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        if record.topic == topics.alerts:
                            print(describe_alert(decode(record.value, Alert)), flush=True)
                            continue
                        state = decode(record.value, BudgetState)
                    except ContractError:
                        continue
                    key = f"{state.budget_id}/{state.subject}"
                    if state.status is BudgetStatus.EXCEEDED and key not in exceeded:
                        exceeded.add(key)
                        print(describe_exceeded(state), flush=True)
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(watch())
