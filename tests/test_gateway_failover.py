"""Failover and circuit breaking, through the gateway, against real fake backends."""

from __future__ import annotations

import time

import openai
import pytest

from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld, routes_for, start_gateway
from tollgate.contract import Status
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "hi"}]


def client(gateway: GatewayWorld) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)


@pytest.fixture
def breaker_world(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path
):
    routes = routes_for(
        [providers.primary.base_url, providers.spare.base_url], providers.claude.base_url
    )
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        routes,
        tmp_path / "spool",
        circuit_failures=2,
        circuit_cooldown_s=0.5,
    )
    yield world
    world.stop()


@pytest.mark.parametrize("failure", [500, 502, 503, 429])
def test_a_failing_primary_fails_over_to_the_spare_before_answering(
    gateway: GatewayWorld, providers: Providers, failure: int
) -> None:
    providers.primary.configure(fail_status=failure)
    completion = client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content
    assert providers.primary.stats()["total"] == 1
    assert providers.spare.stats()["total"] == 1
    (event,) = gateway.events(1)
    assert (event.status, event.backend) == (Status.OK, "openai-1")


def test_a_streamed_call_fails_over_too(gateway: GatewayWorld, providers: Providers) -> None:
    providers.primary.configure(fail_status=503)
    chunks = list(
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    (event,) = gateway.events(1)
    assert (event.status, event.backend, event.output_tokens) == (Status.OK, "openai-1", 16)


def test_an_open_circuit_keeps_calls_off_the_failing_backend_until_a_trial_succeeds(
    breaker_world: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=500)
    openai_client = client(breaker_world)
    for _ in range(6):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # Two failures open the circuit; the next four calls go straight to the spare.
    assert providers.primary.stats()["total"] == 2
    assert providers.spare.stats()["total"] == 6

    providers.primary.configure(fail_status=None)
    time.sleep(0.6)  # the cool-down
    for _ in range(3):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # The half-open trial succeeded and closed the circuit: the primary is back.
    assert providers.primary.stats()["total"] == 5
    assert providers.spare.stats()["total"] == 6
    events = breaker_world.events(9)
    assert [e.backend for e in events[-3:]] == ["openai-0"] * 3


def test_a_failed_trial_reopens_the_circuit(
    breaker_world: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=503)
    openai_client = client(breaker_world)
    for _ in range(3):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    time.sleep(0.6)
    for _ in range(3):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    # Two to open it, one trial after the cool-down, which failed and re-opened it.
    assert providers.primary.stats()["total"] == 3
    assert providers.spare.stats()["total"] == 6


def test_with_every_circuit_open_the_answer_is_a_502(
    breaker_world: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=500)
    providers.spare.configure(fail_status=500)
    openai_client = client(breaker_world)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert "out of service" in raised.value.message
    assert providers.primary.stats()["total"] == providers.spare.stats()["total"] == 2


def test_no_failover_once_the_stream_has_started(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(drop_after_chunks=4, output_tokens=40)
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    received = []

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk)

    with pytest.raises(openai.APIError):
        read_all()
    assert received  # bytes reached the client, so the spare was not tried
    assert providers.spare.stats()["total"] == 0
    (event,) = gateway.events(1)
    assert event.status is Status.UPSTREAM_ERROR
    assert event.output_tokens > 0  # the tokens streamed before the cut are metered
