"""Anthropic-dialect calls to Claude on Bedrock: InvokeModel and its response stream.

The body is Anthropic's Messages request without ``model`` and ``stream`` (the URL says
both) and with ``anthropic_version: bedrock-2023-05-31``; the answer is Anthropic's
message, and each streamed ``chunk`` carries one of Anthropic's stream events, base64
encoded. The last one (``message_stop``) also carries
``amazon-bedrock-invocationMetrics``: the call's token counts, cache reads and writes
included, which the gateway meters by.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.bedrock.event_stream import StreamMessage
from gateway.bedrock.translation import Translation, sse_event
from gateway.usage_reading import TokenUsage

ANTHROPIC_VERSION = "bedrock-2023-05-31"
_METRICS = "amazon-bedrock-invocationMetrics"


def invoke_body(payload: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in payload.items() if k not in ("model", "stream")}
    body["anthropic_version"] = ANTHROPIC_VERSION
    return body


class InvokeTranslation(Translation):
    anthropic = True

    def success_body(self, body: bytes) -> bytes:
        return body  # already Anthropic's message

    def stream_event(self, message: StreamMessage) -> bytes:
        if message.name != "chunk":
            return b""
        try:
            event = json.loads(base64.b64decode(json.loads(message.payload)["bytes"]))
        except (ValueError, KeyError, TypeError):
            return self.stream_error(
                StreamMessage(
                    "exception",
                    "InternalServerException",
                    b'{"message":"Bedrock sent a chunk that is not an Anthropic event"}',
                )
            )
        metrics = event.get(_METRICS) if isinstance(event, dict) else None
        if isinstance(metrics, dict):
            self.usage = _usage_from_metrics(metrics)
        kind = event.get("type") if isinstance(event, dict) else None
        return sse_event(event, event=str(kind or "message"))


def _usage_from_metrics(metrics: dict[str, Any]) -> TokenUsage:
    """Bedrock's invocation metrics count input without cache reads and writes, as
    Anthropic does; the contract's input includes them."""
    cache_read = int(metrics.get("cacheReadInputTokenCount") or 0)
    cache_write = int(metrics.get("cacheWriteInputTokenCount") or 0)
    return TokenUsage(
        input_tokens=int(metrics.get("inputTokenCount") or 0) + cache_read + cache_write,
        output_tokens=int(metrics.get("outputTokenCount") or 0),
        cache_read_input_tokens=cache_read,
        cache_creation_input_tokens=cache_write,
    ).sane()
