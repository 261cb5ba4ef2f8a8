"""The gateway in operation: clients that hang up, health, metrics, logs, and shutdown."""

from __future__ import annotations

import logging

import httpx
import openai
import pytest

from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld, routes_for, start_gateway, wait_until
from tollgate.contract import Status, UsageSource
from tollgate.settings import KafkaSettings

SECRET_PROMPT = "the launch code is 0000-HUSH"
MESSAGES = [{"role": "user", "content": SECRET_PROMPT}]


def client(gateway: GatewayWorld) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)


def test_a_client_that_hangs_up_mid_stream_is_metered_for_what_it_received(
    gateway: GatewayWorld, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    providers.primary.configure(output_tokens=200, chunk_delay_ms=20)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {ACME_KEY}"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        request_id = r.headers["x-tollgate-request-id"]
        received = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                received += 1
            if received == 5:
                break  # leaving the block closes the connection

    event = gateway.event_for(request_id)
    assert event.status is Status.CLIENT_CLOSED
    assert event.streamed
    assert event.usage_source is UsageSource.ESTIMATED
    # Five one-token chunks reached the client; the gateway may have relayed a few more
    # before it saw the connection close, but nowhere near the 200 it would have streamed.
    assert 5 <= event.output_tokens < 100
    assert event.input_tokens > 0
    # A client hanging up is ordinary: no error, no traceback in the gateway's log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_healthz_and_readyz(gateway: GatewayWorld) -> None:
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    # Ready once the emitter has a producer, the budget state has been read once and the
    # instance's claims are back from the broker (it has its share of the budgets).
    assert wait_until(lambda: httpx.get(f"{gateway.url}/readyz").status_code == 200)
    checks = httpx.get(f"{gateway.url}/readyz").json()["checks"]
    assert checks == {"config": True, "broker": True, "budget_state": True, "budget_shares": True}


def test_readyz_says_not_ready_while_the_broker_is_unreachable(
    kafka_settings: KafkaSettings, providers: Providers, tmp_path
) -> None:
    from tollgate.broker import free_port

    nowhere = f"127.0.0.1:{free_port()}"
    kafka = kafka_settings.model_copy(update={"bootstrap_servers": nowhere})
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = start_gateway(kafka, nowhere, kafka.topics(), routes, tmp_path / "spool", read=False)
    try:
        response = httpx.get(f"{world.url}/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["broker"] is False
        # The call itself is served all the same; its event waits in the spool.
        completion = client(world).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content
    finally:
        world.stop()
    assert any((tmp_path / "spool").iterdir())


def test_metrics_count_requests_tokens_events_and_rejections(gateway: GatewayWorld) -> None:
    openai_client = client(gateway)
    for _ in range(3):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=MESSAGES)
    gateway.events(4)
    assert wait_until(lambda: _metric(gateway, "tollgate_gateway_events_emitted") >= 4)

    assert _metric(gateway, "tollgate_gateway_requests_total", status="ok") == 3
    assert _metric(gateway, "tollgate_gateway_requests_total", status="rejected_invalid") == 1
    assert _metric(gateway, "tollgate_gateway_tokens_total", direction="output") == 48
    assert _metric(gateway, "tollgate_gateway_request_duration_seconds_count") == 4
    assert _metric(gateway, "tollgate_gateway_upstream_duration_seconds_count") == 3


def test_logs_carry_no_keys_and_no_prompt_text(
    gateway: GatewayWorld, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    providers.primary.configure(fail_status=500)
    openai_client = client(gateway)
    openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="sk-wrong-0000", max_retries=0
        ).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    gateway.events(2)
    text = caplog.text
    assert "tollgate" in text  # the gateway did log something about these calls
    for secret in (ACME_KEY, "sk-wrong-0000", SECRET_PROMPT, "0000-HUSH"):
        assert secret not in text


def _metric(gateway: GatewayWorld, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{wanted}"' in label_text for key, wanted in labels.items()):
            total += float(value)
    return total


def test_a_fault_in_metering_never_fails_the_call(gateway: GatewayWorld) -> None:
    from gateway.app import PROXY

    def break_metrics() -> None:
        def broken(event: object) -> None:
            raise RuntimeError("metrics are broken")

        gateway.server.app[PROXY].metrics.observe_call = broken  # type: ignore[method-assign]

    gateway.server.call(break_metrics)
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content
    event = gateway.event_for(raw.headers["x-tollgate-request-id"])  # emitted all the same
    assert event.status is Status.OK
    assert _metric(gateway, "tollgate_gateway_metering_faults_total") == 1


def test_an_internal_fault_is_a_500_in_the_providers_format_and_still_one_event(
    gateway: GatewayWorld,
) -> None:
    from gateway.app import PROXY

    def break_routing() -> None:
        def broken(backends: object) -> object:
            raise RuntimeError("a bug")

        gateway.server.app[PROXY].router.candidates = broken  # type: ignore[method-assign]

    gateway.server.call(break_routing)
    with pytest.raises(openai.InternalServerError) as raised:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.code == "internal_error"
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.tenant) == (Status.UPSTREAM_ERROR, 500, "acme")
