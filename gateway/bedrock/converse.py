"""OpenAI-dialect chat calls to any Bedrock model: Converse and ConverseStream.

The chat request becomes Converse's: system and developer messages go to ``system``,
user and assistant turns to ``messages`` (consecutive turns of one role merged, as
Converse wants them alternating), and the sampling options to ``inferenceConfig``. Text
content is carried; what Converse would need translating beyond text (images, tools,
structured output, ``n`` > 1) is refused with a 400 that says so, never silently dropped.

The answer becomes a ``chat.completion`` (or ``chat.completion.chunk`` events ending in
``data: [DONE]``), with usage in OpenAI's terms: ``prompt_tokens`` includes the cache
reads and writes Converse counts apart, and ``prompt_tokens_details.cached_tokens`` the
reads. The stream's usage chunk comes from the final ``metadata`` event.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gateway.bedrock.event_stream import StreamMessage
from gateway.bedrock.translation import Translation, sse_event
from gateway.errors import InvalidRequest
from gateway.usage_reading import TokenUsage

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
}
_UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "audio")


def converse_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The Converse request for an OpenAI chat completion request."""
    for name in _UNSUPPORTED:
        if payload.get(name) is not None:
            raise InvalidRequest(f"`{name}` is not supported for Bedrock models", param=name)
    n = payload.get("n")
    if n not in (None, 1):
        raise InvalidRequest("`n` must be 1 for Bedrock models", param="n")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list", param="messages")
    system: list[dict[str, str]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param=f"messages.{index}")
        role = message.get("role")
        blocks = _text_blocks(message.get("content"), index)
        if role in ("system", "developer"):
            system += blocks
        elif role in ("user", "assistant"):
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"] += blocks
            else:
                turns.append({"role": role, "content": blocks})
        else:
            raise InvalidRequest(
                f"messages of role {role!r} are not supported for Bedrock models",
                param=f"messages.{index}.role",
            )
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system
    config = _inference_config(payload)
    if config:
        body["inferenceConfig"] = config
    return body


def _text_blocks(content: Any, index: int) -> list[dict[str, str]]:
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        blocks = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(
                    f"content parts of type {kind!r} are not supported for Bedrock models",
                    param=f"messages.{index}.content",
                )
            blocks.append({"text": str(part.get("text", ""))})
        return blocks
    raise InvalidRequest("message content must be text", param=f"messages.{index}.content")


def _inference_config(payload: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if payload.get(ours) is not None:
            config[theirs] = payload[ours]
    stop = payload.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list):
        config["stopSequences"] = stop
    return config


class ConverseTranslation(Translation):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._id = f"chatcmpl-{uuid.uuid4().hex}"
        self._created = int(time.time())

    def success_body(self, body: bytes) -> bytes:
        try:
            answer = json.loads(body)
            content = answer["output"]["message"]["content"]
        except (ValueError, KeyError, TypeError):
            return self.error_body("InternalServerException", "Bedrock's answer was malformed")
        text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
        completion: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": _FINISH_REASONS.get(answer.get("stopReason"), "stop"),
                }
            ],
        }
        if isinstance(answer.get("usage"), dict):
            self.usage = _usage(answer["usage"])
            completion["usage"] = _openai_usage(self.usage)
        return json.dumps(completion, separators=(",", ":")).encode()

    def stream_event(self, message: StreamMessage) -> bytes:
        try:
            event = json.loads(message.payload)
        except ValueError:
            event = {}
        name = message.name
        if name == "messageStart":
            return self._chunk({"role": "assistant", "content": ""})
        if name == "contentBlockDelta":
            text = (event.get("delta") or {}).get("text")
            return self._chunk({"content": text}) if text else b""
        if name == "messageStop":
            reason = _FINISH_REASONS.get(event.get("stopReason"), "stop")
            return self._chunk({}, finish_reason=reason)
        if name == "metadata" and isinstance(event.get("usage"), dict):
            self.usage = _usage(event["usage"])
            usage = _openai_usage(self.usage)
            return sse_event({**self._envelope(), "choices": [], "usage": usage})
        return b""

    def stream_end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model_id,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return sse_event({**self._envelope(), "choices": [choice]})


def _usage(usage: dict[str, Any]) -> TokenUsage:
    """Converse counts input without cache reads and writes; the contract's input includes
    them."""
    cache_read = int(usage.get("cacheReadInputTokens") or 0)
    cache_write = int(usage.get("cacheWriteInputTokens") or 0)
    return TokenUsage(
        input_tokens=int(usage.get("inputTokens") or 0) + cache_read + cache_write,
        output_tokens=int(usage.get("outputTokens") or 0),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    ).sane()


def _openai_usage(usage: TokenUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_input_tokens},
    }
