"""The broker goes away during traffic and comes back: calls never notice, events arrive
exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from uuid import UUID

import openai
import pytest

from gateway.app import PROXY
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, routes_for, start_gateway
from tests.own_broker import (
    assert_exactly_once,
    consume,
    kill,
    own_settings,
    start_own_broker,
    wait_until,
)
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_events_made_while_the_broker_is_down_arrive_exactly_once_when_it_is_back(
    kafka_settings: KafkaSettings, own_broker_port: int, providers: Providers, tmp_path: Path
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    first = await start_own_broker(own_broker_port, kafka, topics)
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = await asyncio.to_thread(
        start_gateway, kafka, address, topics, routes, tmp_path / "spool", read=False
    )
    emitter = world.server.call(lambda: world.server.app[PROXY].emitter)
    stats = emitter.stats
    gateway = openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key=ACME_KEY, max_retries=0)

    async def calls(count: int) -> set[object]:
        ids = set()
        for _ in range(count):
            raw = await gateway.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
            ids.add(raw.headers["x-tollgate-request-id"])
            assert raw.parse().choices
        return ids

    try:
        before = await calls(10)
        await wait_until(lambda: stats.emitted == 10)

        kill(first)
        during = await calls(30)  # every call is served while the broker is away
        await wait_until(lambda: stats.spooled >= 1, timeout_s=20)

        await start_own_broker(own_broker_port, kafka, topics)  # empty: Tansu keeps nothing
        after = await calls(10)
        # The first ten, acknowledged by the broker that died, are sent to the new one too.
        await wait_until(lambda: stats.emitted == 60, timeout_s=30)
        assert stats.resent == 10
        assert stats.spool_bytes == 0
        assert stats.dropped == 0
    finally:
        await gateway.close()
        await asyncio.to_thread(world.stop)

    assert len(before | during | after) == 50
    received = await consume(kafka, address, topics.usage, 50)
    # Every call is on the new broker. (The batch whose offsets showed the broker to be new
    # was delivered and is sent again with the rest: the meter drops such copies.)
    assert {e.event_id for e in received} == {UUID(i) for i in before | during | after}


async def test_shutdown_flushes_every_event_to_the_broker(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
) -> None:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = await asyncio.to_thread(
        start_gateway, kafka_settings, broker, topics, routes, tmp_path / "spool", read=False
    )
    gateway = openai.AsyncOpenAI(base_url=f"{world.url}/v1", api_key=ACME_KEY, max_retries=0)
    results = await asyncio.gather(
        *(
            gateway.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
            for _ in range(40)
        )
    )
    await gateway.close()
    await asyncio.to_thread(world.stop)  # at once: no waiting for the emitter's batches

    sent = {raw.headers["x-tollgate-request-id"] for raw in results}
    received = await consume(kafka_settings, broker, topics.usage, 40)
    assert_exactly_once(received, {e.event_id for e in received})
    assert {str(e.event_id) for e in received} == sent
