"""Reading token usage out of provider answers, and estimating it when none is given.

Counts are normalised to the OpenTelemetry convention the contract uses: input tokens
include cached ones, output tokens include reasoning ones. Anthropic reports
``input_tokens`` *excluding* cache reads and writes, so those are added back here.

The estimate, used only when the upstream reports nothing, is the documented heuristic
of one token per four characters of text (OpenAI's rule of thumb for English), rounded
up; events carrying it say ``usage_source=estimated``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from tollgate.contract import Operation, UsageSource

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


@dataclass(slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = UsageSource.REPORTED

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


# -- what the providers send, reduced to the fields that matter ---------------------------


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _AnthropicUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    text: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _OpenAIChunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _OpenAIUsage | None = None
    model: str | None = None


class _ResponseBody(msgspec.Struct):
    usage: _OpenAIUsage | None = None
    model: str | None = None


class _ResponsesEvent(msgspec.Struct):
    type: str = ""
    delta: str | None = None
    response: _ResponseBody | None = None


class _AnthropicMessage(msgspec.Struct):
    usage: _AnthropicUsage | None = None
    model: str | None = None


class _AnthropicEvent(msgspec.Struct):
    type: str = ""
    message: _AnthropicMessage | None = None
    usage: _AnthropicUsage | None = None
    delta: _Delta | None = None


class _Body(msgspec.Struct):
    usage: Any = None
    model: str | None = None


_chunk_decoder = msgspec.json.Decoder(_OpenAIChunk)
_responses_decoder = msgspec.json.Decoder(_ResponsesEvent)
_anthropic_decoder = msgspec.json.Decoder(_AnthropicEvent)
_body_decoder = msgspec.json.Decoder(_Body)


def _from_openai(usage: _OpenAIUsage) -> TokenUsage:
    input_details = usage.prompt_tokens_details or usage.input_tokens_details
    output_details = usage.completion_tokens_details or usage.output_tokens_details
    return TokenUsage(
        input_tokens=usage.prompt_tokens or usage.input_tokens or 0,
        output_tokens=usage.completion_tokens or usage.output_tokens or 0,
        cache_read_input_tokens=(input_details.cached_tokens or 0) if input_details else 0,
        reasoning_tokens=(output_details.reasoning_tokens or 0) if output_details else 0,
    )


def _from_anthropic(usage: _AnthropicUsage, output_tokens: int | None = None) -> TokenUsage:
    cache_read = usage.cache_read_input_tokens or 0
    cache_write = usage.cache_creation_input_tokens or 0
    return TokenUsage(
        input_tokens=(usage.input_tokens or 0) + cache_read + cache_write,
        output_tokens=output_tokens if output_tokens is not None else usage.output_tokens or 0,
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    )


def usage_from_body(body: bytes, anthropic: bool) -> tuple[TokenUsage | None, str | None]:
    """Usage and response model of a whole (non-streamed) answer; None when not reported."""
    try:
        parsed = _body_decoder.decode(body)
    except msgspec.MsgspecError:
        return None, None
    if not isinstance(parsed.usage, dict):
        return None, parsed.model
    if anthropic:
        usage = msgspec.convert(parsed.usage, _AnthropicUsage)
        return _from_anthropic(usage), parsed.model
    return _from_openai(msgspec.convert(parsed.usage, _OpenAIUsage)), parsed.model


class StreamUsage:
    """Follows a streamed answer event by event, keeping its usage and text length."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.usage: TokenUsage | None = None
        self.response_model: str | None = None
        self.output_chars = 0
        self.first_token_seen = False
        self._anthropic_usage: _AnthropicUsage | None = None

    def observe(self, data: bytes) -> bool:
        """Read one event's data; True when it is OpenAI's usage-only final chunk."""
        if not data or data == b"[DONE]":
            return False
        try:
            if self.operation is Operation.MESSAGES:
                self._observe_anthropic(_anthropic_decoder.decode(data))
                return False
            if self.operation is Operation.RESPONSES:
                self._observe_responses(_responses_decoder.decode(data))
                return False
            return self._observe_chunk(_chunk_decoder.decode(data))
        except msgspec.MsgspecError:
            return False

    def _observe_chunk(self, chunk: _OpenAIChunk) -> bool:
        if chunk.model:
            self.response_model = chunk.model
        for choice in chunk.choices:
            text = choice.text or (choice.delta and (choice.delta.content or choice.delta.text))
            if text:
                self.output_chars += len(text)
                self.first_token_seen = True
        if chunk.usage is not None:
            self.usage = _from_openai(chunk.usage)
            return not chunk.choices
        return False

    def _observe_responses(self, event: _ResponsesEvent) -> None:
        if event.delta and event.type.endswith("output_text.delta"):
            self.output_chars += len(event.delta)
            self.first_token_seen = True
        if event.response is not None:
            self.response_model = event.response.model or self.response_model
            if event.response.usage is not None:
                self.usage = _from_openai(event.response.usage)

    def _observe_anthropic(self, event: _AnthropicEvent) -> None:
        if event.type == "message_start" and event.message is not None:
            self.response_model = event.message.model
            self._anthropic_usage = event.message.usage
            if event.message.usage is not None:
                self.usage = _from_anthropic(event.message.usage)
        elif event.type == "content_block_delta" and event.delta is not None:
            text = event.delta.text
            if text:
                self.output_chars += len(text)
                self.first_token_seen = True
        elif event.type == "message_delta" and event.usage is not None:
            # message_delta carries the cumulative output count (and, lately, input too).
            start = self._anthropic_usage or _AnthropicUsage()
            merged = _AnthropicUsage(
                input_tokens=event.usage.input_tokens or start.input_tokens,
                cache_read_input_tokens=event.usage.cache_read_input_tokens
                or start.cache_read_input_tokens,
                cache_creation_input_tokens=event.usage.cache_creation_input_tokens
                or start.cache_creation_input_tokens,
            )
            self.usage = _from_anthropic(merged, output_tokens=event.usage.output_tokens)


def request_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text in a request, for estimating its input tokens."""
    total = 0
    for key in ("messages", "prompt", "input", "system", "instructions"):
        total += _text_chars(body.get(key))
    return total


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_chars(value.get(k)) for k in ("content", "text", "input"))
    return 0


def response_chars(body: bytes) -> int:
    """Characters of generated text in a whole answer, for estimating its output tokens."""
    try:
        answer = msgspec.json.decode(body)
    except msgspec.MsgspecError:
        return 0
    if not isinstance(answer, dict):
        return 0
    total = _text_chars(answer.get("content")) + _text_chars(answer.get("output"))
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            total += _text_chars(choice.get("text")) + _text_chars(choice.get("message"))
    return total


def estimated_usage(body: dict[str, Any], output_chars: int) -> TokenUsage:
    return TokenUsage(
        input_tokens=estimate_tokens(request_chars(body)),
        output_tokens=estimate_tokens(output_chars),
        source=UsageSource.ESTIMATED,
    )
