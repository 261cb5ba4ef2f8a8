"""Anthropic's SDK against the gateway: Messages, streamed and not, sync and async."""

from __future__ import annotations

import anthropic

from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GLOBEX_KEY, GatewayWorld
from tollgate.contract import Operation, Status, UsageSource
from tollgate.fake_provider import count_prompt_tokens

MESSAGES = [{"role": "user", "content": "Summarise the quarterly AI spend, briefly."}]
ANSWER_16 = " ".join(f"tok{i}" for i in range(16))


def client(gateway: GatewayWorld, key: str = GLOBEX_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_a_message_passes_through_and_is_metered_with_cache_tokens_in_input(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.claude.configure(cached_input_tokens=5)
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].text == ANSWER_16  # type: ignore[union-attr]
    prompt = count_prompt_tokens({"messages": MESSAGES})
    # Anthropic reports input tokens without the cached ones; OTel counts them in.
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (prompt - 5, 5)
    assert raw.headers["x-token-used"] == str(prompt + 16)

    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.tenant, event.api_key_id) == ("globex", "globex-app")
    assert (event.operation, event.provider, event.backend) == (
        Operation.MESSAGES,
        "anthropic",
        "anthropic",
    )
    assert (event.input_tokens, event.cache_read_input_tokens, event.output_tokens) == (
        prompt,
        5,
        16,
    )
    assert event.usage_source is UsageSource.REPORTED


def test_the_upstream_gets_an_anthropic_version_and_never_the_client_key(
    gateway: GatewayWorld, providers: Providers
) -> None:
    client(gateway).messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
    upstream = providers.claude.stats()["last_request"]
    assert upstream["headers"]["anthropic-version"]
    assert GLOBEX_KEY not in str(upstream)


def test_a_streamed_message_gives_the_final_message_and_an_event_from_the_stream_usage(
    gateway: GatewayWorld,
) -> None:
    with client(gateway).messages.stream(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER_16
    (event,) = gateway.events(1)
    assert event.streamed
    assert event.status is Status.OK
    assert event.output_tokens == final.usage.output_tokens == 16
    assert event.input_tokens == final.usage.input_tokens
    assert event.ttft_ms is not None


async def test_the_async_client_streams_and_not(gateway: GatewayWorld) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=ACME_KEY, max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="claude-sonnet-4", max_tokens=32, messages=MESSAGES
        )
        async with claude.messages.stream(
            model="claude-sonnet-4", max_tokens=32, messages=MESSAGES
        ) as stream:
            final = await stream.get_final_message()
    assert message.usage.output_tokens == final.usage.output_tokens == 16
    events = gateway.events(2)
    assert sorted(e.streamed for e in events) == [False, True]
    assert all(e.tenant == "acme" and e.output_tokens == 16 for e in events)


def test_an_anthropic_stream_without_usage_is_estimated(
    gateway: GatewayWorld, providers: Providers
) -> None:
    providers.claude.configure(report_usage=False)
    raw = client(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    )
    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert event.usage_source is UsageSource.ESTIMATED
    assert event.input_tokens == count_prompt_tokens({"messages": MESSAGES})
