"""Applications written for Azure OpenAI, unchanged, against the gateway.

``AzureOpenAI`` and ``AsyncAzureOpenAI`` send the key in ``api-key`` and call
``/openai/deployments/{deployment}/...?api-version=...``; the routes file's ``deployments``
maps a deployment name to a model. Each test reads back the call's usage event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.model_names import unknown_model_name
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld, routes_for, start_gateway
from tollgate.contract import Operation, Status, UsageSource
from tollgate.fake_provider import count_prompt_tokens
from tollgate.kafka import KafkaSettings
from tollgate.topics import Topics

API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "Say hello to the Azure front door, please."}]
ANSWER_16 = " ".join(f"tok{i}" for i in range(16))


@pytest.fixture
def azure_gateway(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> Iterator[GatewayWorld]:
    routes = routes_for(
        [providers.primary.base_url, providers.spare.openai_base_url], providers.claude.base_url
    )
    routes = type(routes).model_validate(
        {**routes.model_dump(), "deployments": {"chat-prod": "gpt-4o-mini"}}
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world
    world.stop()


def azure(gateway: GatewayWorld, **options: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=gateway.url,
        api_version=API_VERSION,
        api_key=ACME_KEY,
        max_retries=0,
        **options,
    )


def test_azure_chat_by_deployment_name_reaches_the_mapped_model_and_is_metered(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    raw = azure(azure_gateway).chat.completions.with_raw_response.create(
        model="chat-prod", messages=MESSAGES
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == ANSWER_16
    upstream = providers.primary.stats()["last_request"]
    assert upstream["body"]["model"] == "gpt-4o-mini"
    assert ACME_KEY not in str(upstream)
    event = azure_gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.operation, event.status, event.http_status) == (Operation.CHAT, Status.OK, 200)
    assert (event.request_model, event.api_key_id, event.provider) == (
        "gpt-4o-mini",
        "acme-app",
        "openai",
    )
    assert event.input_tokens == count_prompt_tokens({"messages": MESSAGES})
    assert (event.output_tokens, event.usage_source) == (16, UsageSource.REPORTED)


def test_azure_client_pinned_to_a_deployment_streams_without_usage_it_did_not_ask_for(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    client = azure(azure_gateway, azure_deployment="chat-prod")
    with client.chat.completions.with_streaming_response.create(
        model="anything", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-tollgate-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]

    assert lines
    assert not any('"usage"' in line for line in lines)
    event = azure_gateway.event_for(request_id)
    assert (event.status, event.streamed, event.request_model) == (Status.OK, True, "gpt-4o-mini")
    assert (event.output_tokens, event.usage_source) == (16, UsageSource.REPORTED)


def test_azure_stream_with_usage_asked_for_passes_it_on(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    stream = azure(azure_gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 16
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER_16


def test_azure_embeddings_are_metered(azure_gateway: GatewayWorld, providers: Providers) -> None:
    raw = azure(azure_gateway).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="metered vectors"
    )
    assert len(raw.parse().data[0].embedding) == 8
    event = azure_gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.operation, event.status, event.request_model) == (
        Operation.EMBEDDINGS,
        Status.OK,
        "text-embedding-3-small",
    )
    assert event.input_tokens == count_prompt_tokens({"input": "metered vectors"})


def test_async_azure_client_chat_and_stream(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    async def calls() -> tuple[str, str]:
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=azure_gateway.url,
            api_version=API_VERSION,
            api_key=ACME_KEY,
            max_retries=0,
        )
        async with client:
            completion = await client.chat.completions.create(model="chat-prod", messages=MESSAGES)
            stream = await client.chat.completions.create(
                model="chat-prod", messages=MESSAGES, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return completion.choices[0].message.content or "", text

    plain, streamed = asyncio.run(calls())

    assert plain == streamed == ANSWER_16
    events = azure_gateway.events(2, lambda e: e.request_model == "gpt-4o-mini")
    assert sorted(e.streamed for e in events) == [False, True]
    assert all(e.status is Status.OK and e.output_tokens == 16 for e in events)


def test_azure_legacy_completions_by_deployment(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    completion = azure(azure_gateway).completions.create(model="chat-prod", prompt="Once upon")
    assert completion.choices[0].text == ANSWER_16


def test_the_openai_v1_paths_and_bare_paths_serve_the_same_calls(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    for base in (f"{azure_gateway.url}/openai/v1", azure_gateway.url):
        client = openai.OpenAI(base_url=base, api_key=ACME_KEY, max_retries=0)
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert completion.choices[0].message.content == ANSWER_16
    assert providers.primary.stats()["last_request"]["path"] == "/v1/chat/completions"


def test_an_unknown_deployment_is_a_404_with_its_usage_event(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        azure(azure_gateway).chat.completions.create(model="no-such-deployment", messages=MESSAGES)

    request_id = raised.value.response.headers["x-tollgate-request-id"]
    event = azure_gateway.event_for(request_id)
    # A name no route knows is the caller's text: stored bounded and hashed, never verbatim.
    assert (event.status, event.http_status, event.request_model) == (
        Status.REJECTED_INVALID,
        404,
        unknown_model_name("no-such-deployment"),
    )


def test_an_unknown_path_with_valid_credentials_yields_one_event_and_without_none(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    unknown = f"{azure_gateway.url}/openai/deployments/chat-prod/images/generations"
    answer = httpx.post(unknown, headers={"api-key": ACME_KEY}, json={"prompt": "a cat"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "unknown_url"
    event = azure_gateway.event_for(answer.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.api_key_id) == (
        Status.REJECTED_INVALID,
        404,
        "acme-app",
    )

    anonymous = httpx.post(unknown, headers={"api-key": "sk-wrong"}, json={})
    assert anonymous.status_code == 404
    assert "x-tollgate-request-id" not in anonymous.headers


def test_the_api_key_header_is_accepted_and_a_wrong_one_refused(
    azure_gateway: GatewayWorld, providers: Providers
) -> None:
    wrong = openai.AzureOpenAI(
        azure_endpoint=azure_gateway.url, api_version=API_VERSION, api_key="sk-nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="chat-prod", messages=MESSAGES)
