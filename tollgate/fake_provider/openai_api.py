"""OpenAI's API: chat completions, legacy completions and embeddings.

Shapes follow the real API, including its streaming quirks: chat and legacy streams end with
``data: [DONE]``; usage is streamed only when the request asks with
``stream_options: {"include_usage": true}``, as a last chunk with empty ``choices``, and every
other chunk then carries ``"usage": null``. ``prompt_tokens`` includes the cached tokens.
"""

from __future__ import annotations

import base64
import functools
import struct
import time
from typing import Any

from aiohttp import web

from tollgate.fake_provider.endpoint import Call, json_answer
from tollgate.fake_provider.sse import HOLE, FrameTemplate, frame, send_event_stream
from tollgate.fake_provider.tokens import completion_text, token_piece_json

DONE = b"data: [DONE]\n\n"
_CHAT_LIMITS = ("max_completion_tokens", "max_tokens")
_FINGERPRINT = "fp_fake"


def openai_usage(call: Call, visible_tokens: int) -> dict[str, Any]:
    """Chat usage; reasoning tokens are hidden but counted in ``completion_tokens``."""
    reasoning = call.behaviour.reasoning_tokens
    completion = visible_tokens + reasoning
    return {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": call.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": call.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _streams_usage(call: Call) -> bool:
    options = call.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _request_id_header(call: Call) -> dict[str, str]:
    return {"x-request-id": call.state.next_id("req_")}


async def chat_completions(call: Call) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    model, visible = call.model, call.visible_tokens(*_CHAT_LIMITS)
    finish = "length" if visible < call.behaviour.output_tokens else "stop"
    head = {
        "id": call.state.next_id("chatcmpl-"),
        "object": "chat.completion.chunk" if call.streaming else "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _FINGERPRINT,
    }
    if call.streaming:
        return await _stream_chat(call, head, visible, finish)
    message = {
        "role": "assistant",
        "content": completion_text(visible),
        "refusal": None,
        "annotations": [],
    }
    body = {
        **head,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "service_tier": "default",
    }
    if call.behaviour.report_usage:
        body["usage"] = openai_usage(call, visible)
    return json_answer(body, _request_id_header(call))


async def _stream_chat(
    call: Call, head: dict[str, Any], visible: int, finish: str
) -> web.StreamResponse:
    with_usage = _streams_usage(call) and call.behaviour.report_usage
    tail = {"usage": None} if with_usage else {}

    def chunk(delta: Any, finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**head, "choices": [choice], **tail}

    token = FrameTemplate(chunk({"content": HOLE}, None))
    frames = [frame(chunk({"role": "assistant", "content": "", "refusal": None}, None))]
    frames += [token.fill(token_piece_json(i)) for i in range(visible)]
    frames.append(frame(chunk({}, finish)))
    if with_usage:
        frames.append(frame({**head, "choices": [], "usage": openai_usage(call, visible)}))
    frames.append(DONE)
    return await send_event_stream(call.request, call.behaviour, frames, _request_id_header(call))


async def completions(call: Call) -> web.StreamResponse:
    """``POST /v1/completions``, the legacy text API; its usage has no token details."""
    model, visible = call.model, call.visible_tokens("max_tokens")
    finish = "length" if visible < call.behaviour.output_tokens else "stop"
    head = {
        "id": call.state.next_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    completion = visible + call.behaviour.reasoning_tokens
    usage = {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": call.prompt_tokens + completion,
    }

    def choice(text: Any, finish_reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}

    if not call.streaming:
        body = {**head, "choices": [choice(completion_text(visible), finish)]}
        if call.behaviour.report_usage:
            body["usage"] = usage
        return json_answer(body, _request_id_header(call))
    token = FrameTemplate({**head, "choices": [choice(HOLE, None)]})
    frames = [token.fill(token_piece_json(i)) for i in range(visible)]
    frames.append(frame({**head, "choices": [choice("", finish)]}))
    if _streams_usage(call) and call.behaviour.report_usage:
        frames.append(frame({**head, "choices": [], "usage": usage}))
    frames.append(DONE)
    return await send_event_stream(call.request, call.behaviour, frames, _request_id_header(call))


async def embeddings(call: Call) -> web.StreamResponse:
    """``POST /v1/embeddings``: one small deterministic vector per input.

    ``encoding_format: "base64"`` (what the openai SDK asks for by default, decoding it
    itself) gives little-endian float32 bytes in base64; otherwise a list of floats.
    """
    model, inputs = call.model, _embedding_inputs(call.body.get("input"))
    requested = call.body.get("dimensions")
    dimensions = requested if isinstance(requested, int) and requested > 0 else None
    dimensions = dimensions or call.state.config.embedding_dimensions
    as_base64 = call.body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _vector(_seed(item), dimensions)[1 if as_base64 else 0],
        }
        for index, item in enumerate(inputs)
    ]
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if call.behaviour.report_usage:
        body["usage"] = {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens}
    return json_answer(body, _request_id_header(call))


def _embedding_inputs(value: object) -> list[object]:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def _seed(item: object) -> int:
    return len(item) if isinstance(item, str | list) else 0


@functools.lru_cache(maxsize=1024)
def _vector(seed: int, dimensions: int) -> tuple[list[float], str]:
    """A vector and its base64 float32 form; eighths are exact in float32, so both agree."""
    values = [((seed + j) % 8) / 8 - 0.5 for j in range(dimensions)]
    packed = struct.pack(f"<{dimensions}f", *values)
    return values, base64.b64encode(packed).decode()
