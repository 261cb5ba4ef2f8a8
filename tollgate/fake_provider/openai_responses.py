"""OpenAI's Responses API: ``POST /v1/responses``, plain and streamed.

The stream is the typed event sequence the openai SDK's ``responses.stream()`` helper
accumulates: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, one ``response.output_text.delta`` per token,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``
and finally ``response.completed`` carrying the whole response with its usage (or
``response.incomplete`` when ``max_output_tokens`` cut the text). There is no ``[DONE]``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

from tollgate.fake_provider.endpoint import Call, json_answer
from tollgate.fake_provider.sse import HOLE, FrameTemplate, frame, send_event_stream
from tollgate.fake_provider.tokens import completion_text, token_piece_json


def responses_usage(call: Call, visible_tokens: int) -> dict[str, Any]:
    """Responses usage; like chat, reasoning tokens are inside ``output_tokens``."""
    reasoning = call.behaviour.reasoning_tokens
    output = visible_tokens + reasoning
    return {
        "input_tokens": call.prompt_tokens,
        "input_tokens_details": {"cached_tokens": call.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": call.prompt_tokens + output,
    }


async def responses(call: Call) -> web.StreamResponse:
    """``POST /v1/responses``."""
    model, visible = call.model, call.visible_tokens("max_output_tokens")
    complete = visible >= call.behaviour.output_tokens
    response = _Response(call, model, call.state.next_id("resp_"), call.state.next_id("msg_"))
    headers = {"x-request-id": call.state.next_id("req_")}
    text = completion_text(visible)
    if not call.streaming:
        return json_answer(response.final(text, visible, complete), headers)

    sequence = itertools.count()

    def event(kind: str, **fields: Any) -> bytes:
        return frame({"type": kind, "sequence_number": next(sequence), **fields}, event=kind)

    where = {"item_id": response.item_id, "output_index": 0, "content_index": 0}
    frames = [
        event("response.created", response=response.snapshot("in_progress")),
        event("response.in_progress", response=response.snapshot("in_progress")),
        event("response.output_item.added", output_index=0, item=response.message([], False)),
        event("response.content_part.added", **where, part=_text_part("")),
    ]
    delta_kind = "response.output_text.delta"
    delta = FrameTemplate(
        {"type": delta_kind, "sequence_number": HOLE, **where, "delta": HOLE, "logprobs": []},
        event=delta_kind,
    )
    frames += [
        delta.fill(str(next(sequence)).encode(), token_piece_json(i)) for i in range(visible)
    ]
    final = response.final(text, visible, complete)
    frames += [
        event("response.output_text.done", **where, text=text, logprobs=[]),
        event("response.content_part.done", **where, part=_text_part(text)),
        event("response.output_item.done", output_index=0, item=final["output"][0]),
        event("response.completed" if complete else "response.incomplete", response=final),
    ]
    return await send_event_stream(call.request, call.behaviour, frames, headers)


class _Response:
    """The response object at its stages: in progress, then final with output and usage."""

    def __init__(self, call: Call, model: str, response_id: str, item_id: str) -> None:
        self.call = call
        self.model = model
        self.id = response_id
        self.item_id = item_id
        self.created_at = int(time.time())

    def snapshot(self, status: str) -> dict[str, Any]:
        body = self.call.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def message(self, content: list[dict[str, Any]], done: bool) -> dict[str, Any]:
        return {
            "id": self.item_id,
            "type": "message",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": content,
        }

    def final(self, text: str, visible_tokens: int, complete: bool) -> dict[str, Any]:
        response = self.snapshot("completed" if complete else "incomplete")
        response["output"] = [self.message([_text_part(text)], True)]
        if not complete:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
        if self.call.behaviour.report_usage:
            response["usage"] = responses_usage(self.call, visible_tokens)
        return response


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
