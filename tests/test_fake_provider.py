"""The fake provider, spoken to by the official SDKs over real HTTP.

One provider serves the module from its own thread, so sync clients can block on it and async
clients can share it; each test starts from the start-up config with empty stats.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx
import httpx2
import openai
import pytest

from tollgate.fake_provider import FakeProvider, FakeProviderConfig, count_prompt_tokens

OPENAI_KEY = "sk-openai-test-key"
ANTHROPIC_KEY = "sk-ant-test-key"
PROMPT = "hello world!"  # 12 characters: 3 prompt tokens by the heuristic
WORDS = "tok0 tok1 tok2 tok3 tok4"


def ask(text: str = PROMPT) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def running_provider() -> Iterator[FakeProvider]:
    with FakeProvider(FakeProviderConfig(output_tokens=5)) as provider:
        yield provider


@pytest.fixture
def provider(running_provider: FakeProvider) -> FakeProvider:
    running_provider.reset()
    return running_provider


@pytest.fixture
def openai_client(provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=provider.openai_base_url, api_key=OPENAI_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def async_openai_client(provider: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=provider.openai_base_url, api_key=OPENAI_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
def anthropic_client(provider: FakeProvider) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=provider.base_url, api_key=ANTHROPIC_KEY, max_retries=0
    ) as client:
        yield client


@pytest.fixture
async def async_anthropic_client(
    provider: FakeProvider,
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=provider.base_url, api_key=ANTHROPIC_KEY, max_retries=0
    ) as client:
        yield client


# --- OpenAI chat and legacy completions ------------------------------------------------------


def test_chat_completion_answers_the_configured_words_with_cached_and_reasoning_usage(
    provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    provider.configure(cached_input_tokens=2, reasoning_tokens=3)
    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=ask())
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == WORDS
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 8, 11)
    assert usage.prompt_tokens_details
    assert usage.prompt_tokens_details.cached_tokens == 2
    assert usage.completion_tokens_details
    assert usage.completion_tokens_details.reasoning_tokens == 3


async def test_async_chat_completion_takes_its_output_size_from_a_header(
    async_openai_client: openai.AsyncOpenAI,
) -> None:
    completion = await async_openai_client.chat.completions.create(
        model="gpt-4o", messages=ask(), extra_headers={"x-fake-output-tokens": "2"}
    )
    assert completion.choices[0].message.content == "tok0 tok1"
    assert completion.usage
    assert completion.usage.completion_tokens == 2


def test_chat_stream_without_include_usage_sends_no_usage_chunk(
    openai_client: openai.OpenAI,
) -> None:
    chunks = list(openai_client.chat.completions.create(model="m", messages=ask(), stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == WORDS
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_chat_stream_with_include_usage_ends_with_a_usage_chunk_without_choices(
    async_openai_client: openai.AsyncOpenAI,
) -> None:
    stream = await async_openai_client.chat.completions.create(
        model="m", messages=ask(), stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_max_tokens_cuts_the_text_and_finishes_with_length(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(model="m", messages=ask(), max_tokens=2)
    assert completion.choices[0].message.content == "tok0 tok1"
    assert completion.choices[0].finish_reason == "length"


def test_legacy_completion_streams_its_text_and_usage(openai_client: openai.OpenAI) -> None:
    stream = openai_client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="abcdefgh",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == WORDS
    assert chunks[-1].usage
    assert chunks[-1].usage.prompt_tokens == 2


# --- OpenAI embeddings, responses, models ----------------------------------------------------


def test_embeddings_sdk_default_asks_for_base64_and_decodes_the_same_vectors_as_floats(
    provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    by_default = openai_client.embeddings.create(model="e", input=["abc", "defgh"])
    assert provider.stats()["last_request"]["body"]["encoding_format"] == "base64"
    as_floats = openai_client.embeddings.create(
        model="e", input=["abc", "defgh"], encoding_format="float"
    )
    assert [d.embedding for d in by_default.data] == [d.embedding for d in as_floats.data]
    assert len(by_default.data[0].embedding) == 8
    assert by_default.data[0].embedding != by_default.data[1].embedding
    assert by_default.usage.prompt_tokens == by_default.usage.total_tokens == 2


def test_responses_create_returns_output_text_and_usage_details(
    provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    provider.configure(cached_input_tokens=1, reasoning_tokens=4)
    response = openai_client.responses.create(model="o3-mini", input=PROMPT)
    assert response.output_text == WORDS
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 9)
    assert response.usage.total_tokens == 12
    assert response.usage.input_tokens_details.cached_tokens == 1
    assert response.usage.output_tokens_details.reasoning_tokens == 4


async def test_responses_stream_helper_gets_the_final_response_with_usage(
    async_openai_client: openai.AsyncOpenAI,
) -> None:
    async with async_openai_client.responses.stream(model="gpt-4o", input=PROMPT) as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert "".join(deltas) == WORDS
    assert final.output_text == WORDS
    assert final.usage
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 5)


def test_models_list_names_the_configured_models_in_each_sdks_shape(
    openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    assert "gpt-4o-mini" in [model.id for model in openai_client.models.list()]
    claude = [model for model in anthropic_client.models.list() if model.id == "claude-sonnet-4"]
    assert claude
    assert claude[0].type == "model"


# --- Anthropic messages ----------------------------------------------------------------------


def test_anthropic_message_reports_cached_tokens_apart_from_input_tokens(
    provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    provider.configure(cached_input_tokens=2)
    message = anthropic_client.messages.create(
        model="claude-sonnet-4", max_tokens=100, messages=ask()
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == WORDS
    assert message.model == "claude-sonnet-4"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 1  # 3 prompt tokens, 2 of them read from cache
    assert message.usage.cache_read_input_tokens == 2
    assert message.usage.output_tokens == 5


async def test_anthropic_stream_gives_the_final_message_with_usage(
    provider: FakeProvider, async_anthropic_client: anthropic.AsyncAnthropic
) -> None:
    provider.configure(cached_input_tokens=1)
    async with async_anthropic_client.messages.stream(
        model="claude-haiku-3-5", max_tokens=3, messages=ask()
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "tok0 tok1 tok2"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (2, 1)
    assert final.usage.output_tokens == 3


# --- Failures, hangs, drops ------------------------------------------------------------------


def test_fail_status_header_raises_the_openai_sdks_typed_error(
    openai_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.InternalServerError) as failure:
        openai_client.chat.completions.create(
            model="m", messages=ask(), extra_headers={"x-fake-fail-status": "503"}
        )
    assert failure.value.status_code == 503
    assert failure.value.type == "server_error"


async def test_fail_status_header_raises_the_anthropic_sdks_typed_error_with_retry_after(
    async_anthropic_client: anthropic.AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.RateLimitError) as failure:
        await async_anthropic_client.messages.create(
            model="m", max_tokens=5, messages=ask(), extra_headers={"x-fake-fail-status": "429"}
        )
    assert failure.value.status_code == 429
    assert failure.value.body["error"]["type"] == "rate_limit_error"
    assert failure.value.response.headers["retry-after"] == "1"


def test_fail_rate_fails_every_nth_request_deterministically(
    provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    provider.configure(fail_status=500, fail_rate=0.5)
    outcomes = []
    for _ in range(4):
        try:
            openai_client.chat.completions.create(model="m", messages=ask())
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("failed")
    assert outcomes == ["ok", "failed", "ok", "failed"]


def test_report_usage_false_omits_usage_from_answers_and_streams(
    provider: FakeProvider, openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    provider.configure(report_usage=False)
    assert openai_client.chat.completions.create(model="m", messages=ask()).usage is None
    stream = openai_client.chat.completions.create(
        model="m", messages=ask(), stream=True, stream_options={"include_usage": True}
    )
    assert [chunk.usage for chunk in stream if chunk.usage is not None] == []
    message = anthropic_client.messages.create(model="c", max_tokens=9, messages=ask())
    assert message.usage is None


def test_drop_after_chunks_cuts_an_openai_stream_with_a_connection_error(
    openai_client: openai.OpenAI,
) -> None:
    stream = openai_client.chat.completions.create(
        model="m", messages=ask(), stream=True, extra_headers={"x-fake-drop-after-chunks": "2"}
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(chunk.choices[0].delta.content for chunk in stream)
    assert received == ["", "tok0"]


def test_drop_after_chunks_cuts_an_anthropic_stream_with_a_protocol_error(
    provider: FakeProvider, anthropic_client: anthropic.Anthropic
) -> None:
    provider.configure(drop_after_chunks=4)  # message_start, ping, block start, one token
    received = []
    with (
        pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)),
        anthropic_client.messages.stream(model="c", max_tokens=9, messages=ask()) as stream,
    ):
        received.extend(stream.text_stream)
    assert received == ["tok0"]


def test_a_hanging_provider_makes_the_client_time_out(openai_client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        openai_client.with_options(timeout=0.3).chat.completions.create(
            model="m", messages=ask(), extra_headers={"x-fake-hang": "1"}
        )
    assert time.monotonic() - started < 2


def test_latency_and_chunk_delay_headers_slow_the_stream(openai_client: openai.OpenAI) -> None:
    started = time.monotonic()
    stream = openai_client.chat.completions.create(
        model="m",
        messages=ask(),
        stream=True,
        extra_headers={"x-fake-latency-ms": "100", "x-fake-chunk-delay-ms": "20"},
    )
    chunks = list(stream)
    assert len(chunks) == 7  # role, five tokens, finish
    assert time.monotonic() - started >= 0.1 + 6 * 0.02


def test_an_unparsable_fake_header_is_refused_in_the_providers_error_format(
    openai_client: openai.OpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError, match="x-fake-output-tokens"):
        openai_client.chat.completions.create(
            model="m", messages=ask(), extra_headers={"x-fake-output-tokens": "many"}
        )


# --- Control endpoints and stats -------------------------------------------------------------


def test_stats_record_the_credentials_each_sdk_sent(
    provider: FakeProvider, openai_client: openai.OpenAI, anthropic_client: anthropic.Anthropic
) -> None:
    openai_client.chat.completions.create(model="m", messages=ask())
    assert provider.stats()["last_request"]["authorization"] == f"Bearer {OPENAI_KEY}"
    anthropic_client.messages.create(model="c", max_tokens=9, messages=ask())
    stats = httpx.get(f"{provider.base_url}/_fake/stats").json()
    assert stats["requests_by_path"] == {"/v1/chat/completions": 1, "/v1/messages": 1}
    # The anthropic SDK (v2) sends its api_key as a bearer token, not as x-api-key.
    assert stats["last_request"]["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert "anthropic-version" in stats["last_request"]["headers"]


def test_control_endpoint_flips_the_provider_to_failing_and_reset_restores_it(
    provider: FakeProvider, openai_client: openai.OpenAI
) -> None:
    patched = httpx.post(f"{provider.base_url}/_fake/config", json={"fail_status": 502})
    assert patched.json()["fail_status"] == 502
    with pytest.raises(openai.InternalServerError):
        openai_client.chat.completions.create(model="m", messages=ask())
    httpx.post(f"{provider.base_url}/_fake/reset")
    assert openai_client.chat.completions.create(model="m", messages=ask()).choices


def test_control_endpoint_refuses_unknown_fields_and_bad_values(provider: FakeProvider) -> None:
    url = f"{provider.base_url}/_fake/config"
    assert httpx.post(url, json={"colour": "blue"}).status_code == 400
    assert httpx.post(url, json={"fail_rate": 2}).status_code == 400
    assert httpx.get(url).json()["fail_rate"] == 1.0


# --- Token heuristic and the command line ----------------------------------------------------


def test_prompt_tokens_are_a_quarter_of_the_characters_rounded_up_and_at_least_one() -> None:
    chat = {"messages": [{"role": "system", "content": "abcde"}, *ask("fgh")]}
    assert count_prompt_tokens(chat) == 2
    parts = {"system": "ab", "messages": [{"role": "user", "content": [{"text": "cdefghij"}]}]}
    assert count_prompt_tokens(parts) == 3
    assert count_prompt_tokens({"input": [[1, 2, 3], [4]]}) == 4
    assert count_prompt_tokens({"messages": []}) == 1


def test_command_line_prints_its_url_and_serves_until_terminated() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.fake_provider", "--port", "0", "--output-tokens", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            answer = client.chat.completions.create(model="m", messages=ask())
        assert answer.choices[0].message.content == "tok0 tok1 tok2"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
