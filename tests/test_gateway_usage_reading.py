"""Reading usage from answers: OTel-normalised counts, streams, and estimates."""

from __future__ import annotations

import json

from gateway.routes import BackendConfig, BackendKind
from gateway.sse import SSEFramer, parse_event
from gateway.upstream import client_headers, upstream_headers, upstream_url
from gateway.usage_reading import (
    StreamUsage,
    TokenUsage,
    estimated_usage,
    response_chars,
    usage_from_body,
)
from tollgate.contract import Operation, UsageSource


def test_openai_usage_keeps_cached_inside_input_and_reasoning_inside_output() -> None:
    body = {
        "model": "gpt-4o-2024-08-06",
        "usage": {
            "prompt_tokens": 1000,
            "completion_tokens": 300,
            "prompt_tokens_details": {"cached_tokens": 400},
            "completion_tokens_details": {"reasoning_tokens": 120},
        },
    }
    usage, model = usage_from_body(json.dumps(body).encode(), anthropic=False)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (1000, 400)
    assert (usage.output_tokens, usage.reasoning_tokens) == (300, 120)
    assert model == "gpt-4o-2024-08-06"


def test_anthropic_cache_tokens_are_added_back_into_input_tokens() -> None:
    body = {
        "model": "claude-sonnet-4",
        "usage": {
            "input_tokens": 50,
            "output_tokens": 20,
            "cache_read_input_tokens": 900,
            "cache_creation_input_tokens": 100,
        },
    }
    usage, _ = usage_from_body(json.dumps(body).encode(), anthropic=True)
    assert usage is not None
    assert usage.input_tokens == 1050
    assert usage.cache_read_input_tokens == 900
    assert usage.cache_creation_input_tokens == 100


def test_a_body_without_usage_reports_none() -> None:
    assert usage_from_body(b'{"model": "m"}', anthropic=False)[0] is None
    assert usage_from_body(b"not json", anthropic=False)[0] is None


def test_the_framer_cuts_events_across_arbitrary_chunk_boundaries() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\r\n\r\nevent: x\ndata: [DONE]\n\n'
    framer = SSEFramer()
    events = []
    for i in range(0, len(stream), 5):
        events += framer.feed(stream[i : i + 5])
    assert [parse_event(e) for e in events] == [
        (None, b'{"a":1}'),
        (None, b'{"b":2}'),
        ("x", b"[DONE]"),
    ]
    assert framer.rest() == b""


def test_openai_stream_usage_chunk_is_recognised_as_usage_only() -> None:
    reader = StreamUsage(Operation.CHAT)
    assert not reader.observe(b'{"model":"m","choices":[{"delta":{"content":"Hello"}}]}')
    assert reader.first_token_seen
    assert reader.observe(
        b'{"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}'
    )
    assert reader.usage is not None
    assert (reader.usage.input_tokens, reader.usage.output_tokens) == (7, 2)
    assert reader.output_chars == 5


def test_anthropic_stream_usage_combines_message_start_and_message_delta() -> None:
    reader = StreamUsage(Operation.MESSAGES)
    reader.observe(
        b'{"type":"message_start","message":{"model":"claude","usage":'
        b'{"input_tokens":10,"output_tokens":1,"cache_read_input_tokens":30}}}'
    )
    reader.observe(b'{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}')
    reader.observe(b'{"type":"message_delta","usage":{"output_tokens":42}}')
    assert reader.usage is not None
    assert reader.usage.input_tokens == 40
    assert reader.usage.cache_read_input_tokens == 30
    assert reader.usage.output_tokens == 42


def test_responses_stream_usage_comes_from_the_completed_event() -> None:
    reader = StreamUsage(Operation.RESPONSES)
    reader.observe(b'{"type":"response.output_text.delta","delta":"abc"}')
    reader.observe(
        b'{"type":"response.completed","response":{"model":"gpt-4.1","usage":'
        b'{"input_tokens":12,"output_tokens":3,"input_tokens_details":{"cached_tokens":4}}}}'
    )
    assert reader.usage is not None
    assert (reader.usage.input_tokens, reader.usage.cache_read_input_tokens) == (12, 4)


def test_estimates_use_four_characters_per_token_and_say_so() -> None:
    usage = estimated_usage({"messages": [{"role": "user", "content": "x" * 41}]}, 8)
    assert (usage.input_tokens, usage.output_tokens) == (11, 2)
    assert usage.source is UsageSource.ESTIMATED


def test_client_credentials_never_reach_the_upstream() -> None:
    backend = BackendConfig(name="o", kind=BackendKind.OPENAI, base_url="https://api.example")
    headers = upstream_headers(
        backend,
        {"Authorization": "Bearer client-key", "X-Api-Key": "client", "OpenAI-Beta": "x"},
        "upstream-secret",
    )
    assert headers["authorization"] == "Bearer upstream-secret"
    assert "x-api-key" not in headers
    assert headers["openai-beta"] == "x"


def test_anthropic_and_azure_backends_get_their_own_auth_headers() -> None:
    anthropic = BackendConfig(name="a", kind=BackendKind.ANTHROPIC, base_url="https://a.example")
    headers = upstream_headers(anthropic, {"authorization": "Bearer c"}, "sk-ant")
    assert headers["x-api-key"] == "sk-ant"
    assert "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    azure = BackendConfig(
        name="z",
        kind=BackendKind.AZURE,
        base_url="https://acme.openai.azure.com",
        api_version="2024-10-21",
        deployments={"gpt-4o": "gpt4o-prod"},
    )
    assert upstream_headers(azure, {}, "az")["api-key"] == "az"
    assert upstream_url(azure, "/v1/chat/completions", "gpt-4o") == (
        "https://acme.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )


def test_upstream_credentials_and_cookies_never_reach_the_client() -> None:
    headers = client_headers({"Set-Cookie": "s=1", "Content-Type": "application/json"}.items())
    assert "set-cookie" not in headers
    assert headers["content-type"] == "application/json"


def test_the_providers_account_limits_are_not_passed_on_as_the_callers() -> None:
    headers = client_headers(
        {
            "x-ratelimit-remaining-requests": "9999",
            "anthropic-ratelimit-tokens-remaining": "80000",
            "openai-processing-ms": "12",
        }.items()
    )
    assert set(headers) == {"openai-processing-ms"}


def test_reasoning_counted_apart_from_completion_tokens_is_added_back() -> None:
    # Some OpenAI-compatible servers report reasoning outside completion tokens.
    body = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "completion_tokens_details": {"reasoning_tokens": 50},
        }
    }
    usage, _ = usage_from_body(json.dumps(body).encode(), anthropic=False)
    assert usage is not None
    assert (usage.output_tokens, usage.reasoning_tokens) == (55, 50)


def test_float_counts_and_odd_usage_shapes_never_raise() -> None:
    usage, _ = usage_from_body(b'{"usage": {"prompt_tokens": 7.0, "completion_tokens": 2}}', False)
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (7, 2)
    assert usage_from_body(b'{"usage": {"prompt_tokens": "many"}}', False) == (None, None)
    assert usage_from_body(b'{"choices": 3}', False) == (None, None)
    assert response_chars(b'{"choices": 3, "content": [{"text": "abc"}]}') == 3


def test_inconsistent_counts_are_made_consistent_for_the_contract() -> None:
    usage = TokenUsage(
        input_tokens=5, output_tokens=2, cache_read_input_tokens=9, reasoning_tokens=4
    )
    sane = usage.sane()
    assert (sane.input_tokens, sane.cache_read_input_tokens) == (5, 5)
    assert (sane.output_tokens, sane.reasoning_tokens) == (2, 2)
    assert TokenUsage(input_tokens=-3).sane().input_tokens == 0


def events(*payloads: dict) -> list[bytes]:
    return [json.dumps(p).encode() for p in payloads]


def test_a_cut_anthropic_stream_keeps_the_reported_cache_counts() -> None:
    reader = StreamUsage(Operation.MESSAGES)
    for data in events(
        {
            "type": "message_start",
            "message": {
                "model": "claude-sonnet-4",
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 1000, "output_tokens": 1},
            },
        },
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 400}},
    ):
        reader.observe(data)
    assert not reader.final
    usage = reader.settle({"messages": [{"role": "user", "content": "hi"}]})
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (1010, 1000)
    assert usage.output_tokens == 100  # the estimate of what streamed beats the 1 reported
    assert usage.source is UsageSource.ESTIMATED


def test_an_error_event_in_a_stream_is_noticed() -> None:
    anthropic = StreamUsage(Operation.MESSAGES)
    anthropic.observe(b'{"type": "error", "error": {"type": "overloaded_error"}}')
    openai = StreamUsage(Operation.CHAT)
    openai.observe(b'{"error": {"message": "boom", "type": "server_error"}}')
    assert anthropic.error_seen
    assert openai.error_seen


def test_tool_call_arguments_thinking_and_reasoning_count_as_generated_text() -> None:
    chat = StreamUsage(Operation.CHAT)
    chat.observe(
        b'{"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{\\"q\\": 1}"}}]}}]}'
    )
    chat.observe(b'{"choices": [{"delta": {"reasoning_content": "hmm"}}]}')
    claude = StreamUsage(Operation.MESSAGES)
    claude.observe(b'{"type": "content_block_delta", "delta": {"thinking": "abcd"}}')
    claude.observe(b'{"type": "content_block_delta", "delta": {"partial_json": "{}"}}')
    responses = StreamUsage(Operation.RESPONSES)
    responses.observe(b'{"type": "response.function_call_arguments.delta", "delta": "xyz"}')
    assert chat.output_chars == len('{"q": 1}') + 3
    assert claude.output_chars == 6
    assert responses.output_chars == 3
    assert chat.first_token_seen
    assert claude.first_token_seen


def test_the_providers_account_ids_do_not_cross_either_way() -> None:
    down = client_headers(
        {"openai-organization": "org-x", "anthropic-organization-id": "o"}.items()
    )
    assert not down
    backend = BackendConfig(name="b", kind=BackendKind.OPENAI, base_url="http://127.0.0.1:1")
    up = upstream_headers(backend, {"OpenAI-Organization": "org-client"}, "sk-up")
    assert "openai-organization" not in up
