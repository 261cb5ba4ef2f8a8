"""OpenAI's SDK against the gateway: answers pass through, and every call is metered.

Each test talks to a real gateway on loopback, in front of fake OpenAI servers, and reads
the usage events it emitted back from the real broker.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld
from tollgate.contract import Operation, Status, UsageSource
from tollgate.fake_provider import count_prompt_tokens

MESSAGES = [{"role": "user", "content": "Say hello to the metering pipeline, please."}]
ANSWER_16 = " ".join(f"tok{i}" for i in range(16))


def client(gateway: GatewayWorld, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def async_client(gateway: GatewayWorld, key: str = ACME_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_a_chat_completion_passes_through_with_usage_headers_and_one_event(
    gateway: GatewayWorld, providers: Providers
) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == ANSWER_16
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == count_prompt_tokens({"messages": MESSAGES})
    assert raw.headers["x-token-used"] == str(usage.total_tokens)

    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.tenant, event.team, event.user, event.api_key_id) == (
        "acme",
        "search",
        "ada",
        "acme-app",
    )
    assert (event.operation, event.status, event.http_status) == (Operation.CHAT, Status.OK, 200)
    assert (event.input_tokens, event.output_tokens) == (usage.prompt_tokens, 16)
    assert event.usage_source is UsageSource.REPORTED
    assert (event.request_model, event.response_model) == ("gpt-4o-mini", completion.model)
    assert (event.backend, event.provider, event.streamed) == ("openai-0", "openai", False)
    assert event.duration_ms > 0


def test_credentials_do_not_cross_the_gateway(gateway: GatewayWorld, providers: Providers) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    upstream = providers.primary.stats()["last_request"]
    assert ACME_KEY not in str(upstream)
    assert "authorization" not in upstream["headers"]  # this backend has no key configured
    assert not any(ACME_KEY in value for value in raw.headers.values())


def test_a_stream_passes_chunk_by_chunk_without_the_usage_chunk_the_client_did_not_ask_for(
    gateway: GatewayWorld, providers: Providers
) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = list(stream)

    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == ANSWER_16
    assert providers.primary.stats()["last_request"]["body"]["stream_options"] == {
        "include_usage": True
    }

    (event,) = gateway.events(1)
    assert event.streamed
    assert event.status is Status.OK
    assert event.usage_source is UsageSource.REPORTED
    assert event.output_tokens == 16
    assert event.input_tokens == count_prompt_tokens({"messages": MESSAGES})
    assert event.ttft_ms is not None
    assert 0 < event.ttft_ms <= event.duration_ms


def test_a_stream_that_asks_for_usage_gets_it_and_the_event_agrees(
    gateway: GatewayWorld,
) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None
    assert chunks[-1].choices == []

    (event,) = gateway.events(1)
    assert (event.input_tokens, event.output_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )


def test_cached_and_reasoning_tokens_are_metered(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(cached_input_tokens=8, reasoning_tokens=5)
    completion = client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (event,) = gateway.events(1)
    assert completion.usage is not None
    assert event.cache_read_input_tokens == 8
    assert event.reasoning_tokens == 5
    assert event.output_tokens == completion.usage.completion_tokens


def test_without_reported_usage_the_event_carries_an_estimate(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(report_usage=False)
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert event.usage_source is UsageSource.ESTIMATED
    # The documented heuristic, one token per four characters, on both sides.
    assert event.input_tokens == count_prompt_tokens({"messages": MESSAGES})
    assert event.output_tokens == -(-len(ANSWER_16) // 4)
    assert raw.headers["x-token-used"] == str(event.input_tokens + event.output_tokens)


def test_a_stream_without_reported_usage_is_estimated_from_what_was_streamed(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(report_usage=False)
    chunks = list(
        client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER_16
    (event,) = gateway.events(1)
    assert event.usage_source is UsageSource.ESTIMATED
    assert event.output_tokens == -(-len(ANSWER_16) // 4)


def test_legacy_completions_and_embeddings_are_metered(gateway: GatewayWorld) -> None:
    openai_client = client(gateway)
    completion = openai_client.completions.create(model="gpt-4o-mini", prompt="Once upon a time")
    embedding = openai_client.embeddings.create(
        model="text-embedding-3-small", input=["alpha", "beta"]
    )
    assert completion.choices[0].text == ANSWER_16
    assert len(embedding.data) == 2

    events = {e.operation: e for e in gateway.events(2)}
    assert events[Operation.COMPLETIONS].output_tokens == 16
    assert events[Operation.EMBEDDINGS].input_tokens == embedding.usage.prompt_tokens
    assert events[Operation.EMBEDDINGS].output_tokens == 0


async def test_the_async_client_gets_responses_streamed_and_not(gateway: GatewayWorld) -> None:
    async with async_client(gateway) as openai_client:
        response = await openai_client.responses.create(model="gpt-4o-mini", input="Hello there")
        assert response.output_text == ANSWER_16
        stream = await openai_client.responses.create(
            model="gpt-4o-mini", input="Hello there", stream=True
        )
        kinds = [event.type async for event in stream]
        assert kinds[-1] == "response.completed"

    events = gateway.events(2, lambda e: e.operation is Operation.RESPONSES)
    assert sorted(e.streamed for e in events) == [False, True]
    assert all(e.output_tokens == 16 and e.usage_source is UsageSource.REPORTED for e in events)
    assert all(e.input_tokens == response.usage.input_tokens for e in events)  # type: ignore[union-attr]


async def test_the_async_client_streams_chat(gateway: GatewayWorld) -> None:
    async with async_client(gateway) as openai_client:
        stream = await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == ANSWER_16
    (event,) = gateway.events(1)
    assert event.streamed
    assert event.output_tokens == 16


def test_models_lists_what_the_key_may_call(gateway: GatewayWorld) -> None:
    names = {model.id for model in client(gateway).models.list()}
    assert names == {"gpt-4o-mini", "text-embedding-3-small", "claude-sonnet-4"}


@pytest.mark.parametrize("stream", [False, True])
def test_each_call_is_one_event_with_its_own_id(gateway: GatewayWorld, stream: bool) -> None:
    openai_client = client(gateway)
    for _ in range(5):
        result = openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=stream
        )
        if stream:
            list(result)  # type: ignore[arg-type]
    events = gateway.events(6, timeout_s=3)  # wait a moment for any duplicate
    assert len(events) == 5
    assert len({e.event_id for e in events}) == 5
