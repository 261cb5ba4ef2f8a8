"""Every way a call can go wrong gets the provider's error format, and an event if a call
was attempted."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GLOBEX_KEY, GatewayWorld, routes_for, start_gateway
from tollgate.broker import free_port
from tollgate.contract import Status
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "hi"}]


def client(gateway: GatewayWorld, key: str = ACME_KEY, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, **options)


def post(gateway: GatewayWorld, path: str, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {ACME_KEY}", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(f"{gateway.url}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]


def openai_error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


# -- authentication ---------------------------------------------------------------------------


def test_no_key_is_a_401_in_openais_format_and_a_rejected_event(gateway: GatewayWorld) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert response.status_code == 401
    assert openai_error(response)["code"] == "invalid_api_key"
    event = gateway.event_for(response.headers["x-tollgate-request-id"])
    assert event.status is Status.REJECTED_AUTH
    assert event.http_status == 401
    assert event.tenant is None
    assert event.input_tokens == event.output_tokens == 0


def test_a_wrong_key_raises_the_sdks_authentication_error(gateway: GatewayWorld) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        client(gateway, key="sk-not-a-key").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert "sk-not-a-key" not in raised.value.message


def test_a_wrong_key_on_the_messages_api_is_anthropics_authentication_error(
    gateway: GatewayWorld,
) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="sk-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as raised:
        claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=MESSAGES)
    assert raised.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_a_key_used_on_a_model_it_may_not_call_is_a_403(gateway: GatewayWorld) -> None:
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client(gateway, key=GLOBEX_KEY).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.tenant, event.request_model) == (
        Status.REJECTED_AUTH,
        "globex",
        "gpt-4o-mini",
    )


# -- the request ---------------------------------------------------------------------------


def test_malformed_json_is_a_400(gateway: GatewayWorld) -> None:
    response = post(
        gateway,
        "/v1/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = openai_error(response)
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in str(error["message"])
    event = gateway.event_for(response.headers["x-tollgate-request-id"])
    assert (event.status, event.tenant) == (Status.REJECTED_INVALID, "acme")


@pytest.mark.parametrize("body", [{"messages": MESSAGES}, {"model": 4, "messages": MESSAGES}])
def test_a_missing_or_mistyped_model_is_a_400_naming_the_param(
    gateway: GatewayWorld, body: dict[str, object]
) -> None:
    response = post(gateway, "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert openai_error(response)["param"] == "model"


def test_a_json_array_body_is_a_400(gateway: GatewayWorld) -> None:
    response = post(gateway, "/v1/chat/completions", json=[1, 2])
    assert response.status_code == 400


def test_an_unknown_model_is_a_404_from_both_sdks(gateway: GatewayWorld) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client(gateway).chat.completions.create(model="gpt-9-ultra", messages=MESSAGES)
    assert raised.value.code == "model_not_found"
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-unheard-of", max_tokens=5, messages=MESSAGES)
    events = gateway.events(2)
    assert {e.status for e in events} == {Status.REJECTED_INVALID}
    assert {e.http_status for e in events} == {404}


def test_an_openai_model_on_the_messages_api_is_not_found(gateway: GatewayWorld) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=ACME_KEY, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="gpt-4o-mini", max_tokens=5, messages=MESSAGES)


def test_a_body_that_is_not_json_is_a_415(gateway: GatewayWorld) -> None:
    response = post(
        gateway,
        "/v1/chat/completions",
        content=b"model=gpt-4o-mini",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert openai_error(response)["type"] == "invalid_request_error"


def test_a_large_body_under_the_limit_arrives_whole(
    gateway: GatewayWorld, providers: Providers
) -> None:
    big = [{"role": "user", "content": "lorem ipsum " * 150_000}]  # 1.8 MB, many TCP reads
    completion = client(gateway).chat.completions.create(model="gpt-4o-mini", messages=big)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == -(-len(big[0]["content"]) // 4)


def test_a_chunked_body_over_the_limit_is_a_413_too(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path
) -> None:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    small = start_gateway(
        kafka_settings, broker, topics, routes, tmp_path / "spool", max_body_bytes=2048
    )
    try:

        def body():  # no Content-Length: the gateway must count as it reads
            yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}]}'

        response = post(
            small,
            "/v1/chat/completions",
            content=body(),
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413
        assert openai_error(response)["type"] == "invalid_request_error"
        assert providers.primary.stats()["total"] == 0
    finally:
        small.stop()


def test_a_body_over_the_limit_is_a_413_in_anthropics_format_too(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path
) -> None:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    small = start_gateway(
        kafka_settings, broker, topics, routes, tmp_path / "spool", max_body_bytes=2048
    )
    try:
        big = [{"role": "user", "content": "x" * 4096}]
        with pytest.raises(openai.APIStatusError) as raised:
            client(small).chat.completions.create(model="gpt-4o-mini", messages=big)
        assert raised.value.status_code == 413
        claude = anthropic.Anthropic(base_url=small.url, api_key=ACME_KEY, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as raised_too:
            claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=big)
        assert raised_too.value.status_code == 413
        assert raised_too.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
        assert providers.primary.stats()["total"] == 0
        events = small.events(2)
        assert {(e.status, e.http_status) for e in events} == {(Status.REJECTED_INVALID, 413)}
    finally:
        small.stop()


# -- the upstream ---------------------------------------------------------------------------


def test_an_upstream_that_does_not_answer_in_time_is_a_504_and_a_timeout_event(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path
) -> None:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url, timeout_s=0.5)
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    try:
        providers.primary.configure(latency_ms=3000)
        with pytest.raises(openai.APIStatusError) as raised:
            client(world).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert raised.value.status_code == 504
        assert raised.value.code == "upstream_timeout"
        event = world.event_for(raised.value.response.headers["x-tollgate-request-id"])
        assert (event.status, event.http_status, event.backend) == (
            Status.TIMEOUT,
            504,
            "openai-0",
        )
    finally:
        world.stop()


def test_an_unreachable_upstream_is_a_502_and_an_upstream_error_event(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    routes = routes_for([nowhere], providers.claude.base_url)
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    try:
        with pytest.raises(openai.APIStatusError) as raised:
            client(world).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert raised.value.status_code == 502
        event = world.event_for(raised.value.response.headers["x-tollgate-request-id"])
        assert (event.status, event.http_status) == (Status.UPSTREAM_ERROR, 502)
    finally:
        world.stop()


def test_a_provider_error_that_is_not_retried_passes_through_as_written(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=400)
    with pytest.raises(openai.BadRequestError) as raised:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert providers.primary.stats()["total"] == 1
    assert providers.spare.stats()["total"] == 0  # a 400 is the caller's fault: no failover
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status) == (Status.UPSTREAM_ERROR, 400)


def test_when_every_backend_refuses_the_last_provider_error_is_passed_on(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=503)
    providers.spare.configure(fail_status=429)
    with pytest.raises(openai.RateLimitError) as raised:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.backend) == (
        Status.UPSTREAM_ERROR,
        429,
        "openai-1",
    )


def test_stream_options_that_is_not_an_object_is_a_400(gateway: GatewayWorld) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "stream_options": "yes"}
    response = post(gateway, "/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert openai_error(response)["param"] == "stream_options"


def test_a_model_name_longer_than_the_contract_takes_is_a_400(gateway: GatewayWorld) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(gateway).chat.completions.create(model="gpt-" + "x" * 300, messages=MESSAGES)
    event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert event.status is Status.REJECTED_INVALID


def test_a_backend_refusing_the_gateways_own_key_is_a_502_without_its_body(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(fail_status=401)
    providers.spare.configure(fail_status=401)
    with pytest.raises(openai.APIStatusError) as raised:
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raised.value.status_code == 502
    assert "refused the gateway's credentials" in raised.value.message
    assert providers.spare.stats()["total"] == 1  # the next backend was tried


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/v1/nothing-here", 404), ("GET", "/v1/chat/completions", 405)],
)
def test_unknown_endpoints_and_methods_answer_in_the_providers_format(
    gateway: GatewayWorld, method: str, path: str, status: int
) -> None:
    response = httpx.request(method, f"{gateway.url}{path}")
    assert response.status_code == status
    openai_error(response)
