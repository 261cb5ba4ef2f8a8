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

    def sane(self) -> TokenUsage:
        """These counts made consistent, whatever a provider sent: never negative, cached
        tokens within input, reasoning within output (the contract's invariants)."""
        input_tokens = max(self.input_tokens, 0)
        cache_read = min(max(self.cache_read_input_tokens, 0), input_tokens)
        cache_write = min(max(self.cache_creation_input_tokens, 0), input_tokens - cache_read)
        output_tokens = max(self.output_tokens, 0)
        return TokenUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read,
            cache_creation_input_tokens=cache_write,
            reasoning_tokens=min(max(self.reasoning_tokens, 0), output_tokens),
            source=self.source,
        )


# -- what the providers send, reduced to the fields that matter ---------------------------


Count = int | float | None
"""Some OpenAI-compatible servers write counts as floats (``5.0``)."""


class _Details(msgspec.Struct):
    cached_tokens: Count = None
    reasoning_tokens: Count = None


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: Count = None
    completion_tokens: Count = None
    input_tokens: Count = None
    output_tokens: Count = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _AnthropicUsage(msgspec.Struct):
    input_tokens: Count = None
    output_tokens: Count = None
    cache_read_input_tokens: Count = None
    cache_creation_input_tokens: Count = None


class _FunctionDelta(msgspec.Struct):
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    text: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None
    thinking: str | None = None
    partial_json: str | None = None

    def generated_chars(self) -> int:
        """Characters the model generated in this delta: text, reasoning, tool arguments."""
        total = 0
        for text in (self.content, self.text, self.reasoning_content, self.thinking):
            if text:
                total += len(text)
        if self.partial_json:
            total += len(self.partial_json)
        for call in self.tool_calls or ():
            if call.function is not None and call.function.arguments:
                total += len(call.function.arguments)
        return total


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _OpenAIChunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _OpenAIUsage | None = None
    model: str | None = None
    error: Any = None


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


def _n(value: Count) -> int:
    return max(int(value or 0), 0)


def _from_openai(usage: _OpenAIUsage) -> TokenUsage:
    input_details = usage.prompt_tokens_details or usage.input_tokens_details
    output_details = usage.completion_tokens_details or usage.output_tokens_details
    output_tokens = _n(usage.completion_tokens or usage.output_tokens)
    reasoning = _n(output_details.reasoning_tokens) if output_details else 0
    if reasoning > output_tokens:
        # Some OpenAI-compatible servers (xAI's, for one) count reasoning apart from
        # completion tokens; OTel's output tokens include it.
        output_tokens += reasoning
    return TokenUsage(
        input_tokens=_n(usage.prompt_tokens or usage.input_tokens),
        output_tokens=output_tokens,
        cache_read_input_tokens=_n(input_details.cached_tokens) if input_details else 0,
        reasoning_tokens=reasoning,
    ).sane()


def _from_anthropic(usage: _AnthropicUsage, output_tokens: Count = None) -> TokenUsage:
    cache_read = _n(usage.cache_read_input_tokens)
    cache_write = _n(usage.cache_creation_input_tokens)
    return TokenUsage(
        input_tokens=_n(usage.input_tokens) + cache_read + cache_write,
        output_tokens=_n(output_tokens if output_tokens is not None else usage.output_tokens),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    )


def usage_from_body(body: bytes, anthropic: bool) -> tuple[TokenUsage | None, str | None]:
    """Usage and response model of a whole (non-streamed) answer; None when not reported."""
    try:
        parsed = _body_decoder.decode(body)
        if not isinstance(parsed.usage, dict):
            return None, parsed.model
        if anthropic:
            return _from_anthropic(msgspec.convert(parsed.usage, _AnthropicUsage)), parsed.model
        return _from_openai(msgspec.convert(parsed.usage, _OpenAIUsage)), parsed.model
    except (msgspec.MsgspecError, ValueError, TypeError):
        return None, None


class StreamUsage:
    """Follows a streamed answer event by event, keeping its usage and text length.

    ``final`` says the provider's last word on usage was seen (OpenAI's usage chunk,
    Responses' ``response.completed``, Anthropic's ``message_delta``); a stream that ends
    before it is metered by ``settle`` from what was reported and what passed through.
    """

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.usage: TokenUsage | None = None
        self.final = False
        self.error_seen = False
        """The provider ended the stream with an error event."""
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
        except (msgspec.MsgspecError, ValueError, TypeError):
            return False

    def settle(self, request: dict[str, Any]) -> TokenUsage:
        """The call's usage: as reported if complete, else the best that is known.

        For a cut-short stream, reported input and cache counts are kept and the output
        is the larger of the reported count and the estimate of what was streamed.
        """
        if self.usage is not None and self.final:
            return self.usage
        estimate = estimated_usage(request, self.output_chars)
        if self.usage is None:
            return estimate
        partial = TokenUsage(**{**_fields(self.usage), "source": UsageSource.ESTIMATED})
        partial.output_tokens = max(partial.output_tokens, estimate.output_tokens)
        return partial.sane()

    def _saw_text(self, chars: int) -> None:
        if chars:
            self.output_chars += chars
            self.first_token_seen = True

    def _observe_chunk(self, chunk: _OpenAIChunk) -> bool:
        if chunk.error is not None:
            self.error_seen = True
        if chunk.model:
            self.response_model = chunk.model
        for choice in chunk.choices:
            if choice.text:
                self._saw_text(len(choice.text))
            if choice.delta is not None:
                self._saw_text(choice.delta.generated_chars())
        if chunk.usage is not None:
            self.usage = _from_openai(chunk.usage)
            self.final = True
            return not chunk.choices
        return False

    def _observe_responses(self, event: _ResponsesEvent) -> None:
        if event.delta and event.type.endswith(".delta"):
            self._saw_text(len(event.delta))
        if event.type in ("error", "response.failed"):
            self.error_seen = True
        if event.response is not None:
            self.response_model = event.response.model or self.response_model
            if event.response.usage is not None:
                self.usage = _from_openai(event.response.usage)
                self.final = event.type in ("response.completed", "response.incomplete")

    def _observe_anthropic(self, event: _AnthropicEvent) -> None:
        if event.type == "message_start" and event.message is not None:
            self.response_model = event.message.model
            self._anthropic_usage = event.message.usage
            if event.message.usage is not None:
                self.usage = _from_anthropic(event.message.usage)
        elif event.type == "content_block_delta" and event.delta is not None:
            self._saw_text(event.delta.generated_chars())
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
            self.final = True
        elif event.type == "error":
            self.error_seen = True


def _fields(usage: TokenUsage) -> dict[str, Any]:
    return {name: getattr(usage, name) for name in TokenUsage.__dataclass_fields__}


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
        if not isinstance(answer, dict):
            return 0
        total = _text_chars(answer.get("content")) + _text_chars(answer.get("output"))
        choices = answer.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict):
                total += _text_chars(choice.get("text")) + _text_chars(choice.get("message"))
        return total
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
        return 0


def estimated_usage(body: dict[str, Any], output_chars: int) -> TokenUsage:
    return TokenUsage(
        input_tokens=estimate_tokens(request_chars(body)),
        output_tokens=estimate_tokens(output_chars),
        source=UsageSource.ESTIMATED,
    )
