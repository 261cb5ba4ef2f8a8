"""Anthropic's Messages API: ``POST /v1/messages``, plain and streamed.

Usage is reproduced faithfully: ``input_tokens`` EXCLUDES the cached prompt tokens, which are
reported apart as ``cache_read_input_tokens`` (OpenAI's ``prompt_tokens`` includes them).
The stream is ``message_start`` (input usage, ``output_tokens: 1``), a ``ping``,
``content_block_start``, one ``content_block_delta`` per token, ``content_block_stop``,
``message_delta`` (stop reason and the final ``output_tokens``) and ``message_stop``; every
event has an ``event:`` line, which the anthropic SDK needs. Reasoning tokens are not
reported here: Anthropic bills thinking as visible thinking blocks, which this fake omits.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tollgate.fake_provider.endpoint import Call, json_answer
from tollgate.fake_provider.sse import HOLE, FrameTemplate, frame, send_event_stream
from tollgate.fake_provider.tokens import completion_text, token_piece_json

_EMPTY_TEXT = {"type": "text", "text": ""}
_MESSAGE_STOP = frame({"type": "message_stop"}, event="message_stop")


def anthropic_usage(call: Call, output_tokens: int) -> dict[str, Any]:
    """Message usage: uncached input, cache reads apart, no cache writes."""
    cached = call.cached_tokens
    return {
        "input_tokens": call.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
    }


async def messages(call: Call) -> web.StreamResponse:
    """``POST /v1/messages``."""
    model, visible = call.model, call.visible_tokens("max_tokens")
    stop_reason = "end_turn" if visible >= call.behaviour.output_tokens else "max_tokens"
    report_usage = call.behaviour.report_usage
    headers = {"request-id": call.state.next_id("req_")}
    message: dict[str, Any] = {
        "id": call.state.next_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not call.streaming:
        message["content"] = [{"type": "text", "text": completion_text(visible)}]
        message["stop_reason"] = stop_reason
        if report_usage:
            message["usage"] = anthropic_usage(call, visible)
        return json_answer(message, headers)

    if report_usage:
        message["usage"] = anthropic_usage(call, 1)
    delta = FrameTemplate(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": HOLE},
        },
        event="content_block_delta",
    )
    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if report_usage:
        message_delta["usage"] = {"output_tokens": visible}
    frames = [
        frame({"type": "message_start", "message": message}, event="message_start"),
        frame({"type": "ping"}, event="ping"),
        frame(
            {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT},
            event="content_block_start",
        ),
    ]
    frames += [delta.fill(token_piece_json(i)) for i in range(visible)]
    frames += [
        frame({"type": "content_block_stop", "index": 0}, event="content_block_stop"),
        frame(message_delta, event="message_delta"),
        _MESSAGE_STOP,
    ]
    return await send_event_stream(call.request, call.behaviour, frames, headers)


async def count_tokens(call: Call) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: the prompt's tokens, by the fake's heuristic."""
    return json_answer({"input_tokens": call.prompt_tokens}, {})
