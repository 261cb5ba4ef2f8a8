"""AWS Bedrock's runtime API, faked on the wire: SigV4 checked, event-stream framed answers.

Serves ``POST /model/{modelId}/invoke``, ``/invoke-with-response-stream`` (Anthropic's
Messages body with ``anthropic_version: bedrock-2023-05-31``, as Bedrock takes it for
Claude), ``/converse`` and ``/converse-stream``. Streams are binary event-stream
messages with CRCs (``tollgate.fake_provider.event_stream``), as Bedrock sends them.

Every request must be signed with SigV4 for service ``bedrock`` by the fake's credentials
(``FAKE_AWS_ACCESS_KEY_ID`` / ``FAKE_AWS_SECRET_ACCESS_KEY``, any region), the signature
recomputed here with botocore, or carry ``Authorization: Bearer FAKE_BEDROCK_API_KEY``;
anything else gets Bedrock's 403. The fake's config steers the answers as for the other
APIs (``output_tokens``, ``cached_input_tokens``, ``report_usage``, ``fail_status``,
``latency_ms``); ``drop_after_chunks`` ends a stream after that many events with a
``modelStreamErrorException`` message, which is how Bedrock reports a failure mid-stream,
and ``corrupt_frame_after_chunks`` sends a frame whose CRC is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import msgspec
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tollgate.fake_provider import event_stream
from tollgate.fake_provider.behaviour import CallBehaviour
from tollgate.fake_provider.endpoint import STATE
from tollgate.fake_provider.tokens import completion_text, count_prompt_tokens, token_piece

FAKE_AWS_ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
FAKE_AWS_SECRET_ACCESS_KEY = "fake/bedrock/secret/key/0123456789abcdef"
FAKE_BEDROCK_API_KEY = "ABSKfake-bedrock-api-key-0123456789"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
_MAX_SKEW = timedelta(minutes=15)
_STATUS_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}


class BedrockError(Exception):
    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or _STATUS_ERRORS.get(status, "InternalServerException")


def add_bedrock_routes(app: web.Application) -> None:
    app.router.add_post("/model/{model_id}/{operation}", _handle)


async def _handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        raw = await request.read()
        _check_credentials(request, raw)
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise BedrockError(400, "Malformed input request, please reformat your input") from None
        state.stats.record(request.path, request.headers, body)
        behaviour = state.next_behaviour()
        if behaviour.latency_ms > 0:
            await asyncio.sleep(behaviour.latency_ms / 1000)
        if behaviour.fail_status is not None:
            raise BedrockError(behaviour.fail_status, "fake Bedrock failure injected")
        if not isinstance(body, dict):
            raise BedrockError(400, "Malformed input request: expected a JSON object")
        model_id = unquote(request.match_info["model_id"])
        operation = request.match_info["operation"]
        if operation in ("invoke", "invoke-with-response-stream"):
            return await _invoke(request, body, behaviour, model_id, operation != "invoke")
        if operation in ("converse", "converse-stream"):
            return await _converse(request, body, behaviour, operation != "converse")
        raise BedrockError(404, f"unknown operation {operation}", "UnknownOperationException")
    except BedrockError as error:
        return web.json_response(
            {"message": str(error)},
            status=error.status,
            headers={"x-amzn-ErrorType": f"{error.error_type}:http://internal.amazon.com/"},
        )


# -- credentials ------------------------------------------------------------------------


def _check_credentials(request: web.Request, raw: bytes) -> None:
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        if not hmac.compare_digest(authorization[7:], FAKE_BEDROCK_API_KEY):
            raise BedrockError(403, "Invalid API Key format", "UnrecognizedClientException")
        return
    if not authorization.startswith("AWS4-HMAC-SHA256 "):
        raise BedrockError(403, "Missing Authentication Token", "MissingAuthenticationToken")
    fields = dict(
        part.strip().split("=", 1)
        for part in authorization.removeprefix("AWS4-HMAC-SHA256 ").split(",")
    )
    access_key, date, region, service, _ = fields["Credential"].split("/")
    if access_key != FAKE_AWS_ACCESS_KEY_ID:
        raise BedrockError(
            403, "The security token included in the request is invalid.", "UnrecognizedClient"
        )
    timestamp = request.headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BedrockError(403, "missing or malformed X-Amz-Date", "InvalidSignature") from None
    if abs(datetime.now(UTC) - signed_at) > _MAX_SKEW or not timestamp.startswith(date):
        raise BedrockError(403, "Signature expired", "InvalidSignatureException")
    if service != "bedrock":
        raise BedrockError(403, f"credential should be scoped to bedrock, not {service}")
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        raise BedrockError(403, "host and x-amz-date must be signed", "InvalidSignatureException")
    replay = AWSRequest(
        method=request.method,
        url=f"http://{request.host}{request.raw_path}",
        data=raw,
        headers={name: request.headers.get(name, "") for name in signed},
    )
    replay.context["timestamp"] = timestamp
    signer = SigV4Auth(
        Credentials(FAKE_AWS_ACCESS_KEY_ID, FAKE_AWS_SECRET_ACCESS_KEY), "bedrock", region
    )
    expected = signer.signature(
        signer.string_to_sign(replay, signer.canonical_request(replay)), replay
    )
    if not hmac.compare_digest(expected, fields["Signature"]):
        raise BedrockError(
            403,
            "The request signature we calculated does not match the signature you provided.",
            "InvalidSignatureException",
        )


# -- InvokeModel: Anthropic's Messages body ----------------------------------------------


async def _invoke(
    request: web.Request,
    body: dict[str, Any],
    behaviour: CallBehaviour,
    model_id: str,
    streamed: bool,
) -> web.StreamResponse:
    for key in ("model", "stream"):
        if key in body:
            raise BedrockError(400, f"extraneous key [{key}] is not permitted")
    if body.get("anthropic_version") != ANTHROPIC_VERSION:
        raise BedrockError(400, f"anthropic_version must be {ANTHROPIC_VERSION}")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or not isinstance(body.get("messages"), list):
        raise BedrockError(400, "messages and max_tokens are required")
    prompt = count_prompt_tokens(body)
    cached = min(behaviour.cached_input_tokens, prompt)
    visible = max(0, min(behaviour.output_tokens, max_tokens))
    stop_reason = "end_turn" if visible >= behaviour.output_tokens else "max_tokens"
    usage = {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": visible,
    }
    model = _claude_name(model_id)
    message: dict[str, Any] = {
        "id": "msg_bdrk_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": completion_text(visible)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    if behaviour.report_usage:
        message["usage"] = usage
    if not streamed:
        headers = {
            "x-amzn-bedrock-input-token-count": str(prompt - cached),
            "x-amzn-bedrock-output-token-count": str(visible),
        }
        return web.json_response(message, headers=headers)
    start = {**message, "content": [], "stop_reason": None}
    if behaviour.report_usage:
        start["usage"] = {**usage, "output_tokens": 1}
    pieces: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    pieces += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
        for t in (token_piece(i) for i in range(visible))
    ]
    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if behaviour.report_usage:
        message_delta["usage"] = {"output_tokens": visible}
    metrics = {
        "inputTokenCount": prompt - cached,
        "outputTokenCount": visible,
        "invocationLatency": 1,
        "firstByteLatency": 1,
        "cacheReadInputTokenCount": cached,
        "cacheWriteInputTokenCount": 0,
    }
    pieces += [
        {"type": "content_block_stop", "index": 0},
        message_delta,
        {"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics},
    ]
    frames = [
        event_stream.event(
            "chunk",
            msgspec.json.encode({"bytes": base64.b64encode(msgspec.json.encode(p)).decode()}),
        )
        for p in pieces
    ]
    return await _send_frames(request, behaviour, frames)


def _claude_name(model_id: str) -> str:
    """``us.anthropic.claude-sonnet-4-20250514-v1:0`` → ``claude-sonnet-4-20250514``."""
    name = model_id.split("anthropic.", 1)[-1]
    return name.rsplit("-v", 1)[0] if "-v" in name else name


# -- Converse: Bedrock's own message format ----------------------------------------------


async def _converse(
    request: web.Request, body: dict[str, Any], behaviour: CallBehaviour, streamed: bool
) -> web.StreamResponse:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BedrockError(400, "messages must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BedrockError(400, "each message needs role user or assistant")
        if not isinstance(message.get("content"), list):
            raise BedrockError(400, "each message needs a content list")
    config = body.get("inferenceConfig") or {}
    max_tokens = config.get("maxTokens") if isinstance(config, dict) else None
    prompt = count_prompt_tokens(body)
    cached = min(behaviour.cached_input_tokens, prompt)
    visible = behaviour.output_tokens
    if isinstance(max_tokens, int):
        visible = max(0, min(visible, max_tokens))
    stop_reason = "end_turn" if visible >= behaviour.output_tokens else "max_tokens"
    usage = {
        "inputTokens": prompt - cached,
        "outputTokens": visible,
        "totalTokens": prompt + visible,
        "cacheReadInputTokens": cached,
        "cacheWriteInputTokens": 0,
    }
    if not streamed:
        answer: dict[str, Any] = {
            "output": {
                "message": {"role": "assistant", "content": [{"text": completion_text(visible)}]}
            },
            "stopReason": stop_reason,
            "metrics": {"latencyMs": 1},
        }
        if behaviour.report_usage:
            answer["usage"] = usage
        return web.json_response(answer)
    frames = [event_stream.event("messageStart", b'{"role":"assistant"}')]
    frames += [
        event_stream.event(
            "contentBlockDelta",
            msgspec.json.encode({"contentBlockIndex": 0, "delta": {"text": token_piece(i)}}),
        )
        for i in range(visible)
    ]
    frames += [
        event_stream.event("contentBlockStop", b'{"contentBlockIndex":0}'),
        event_stream.event("messageStop", msgspec.json.encode({"stopReason": stop_reason})),
    ]
    metadata: dict[str, Any] = {"metrics": {"latencyMs": 1}}
    if behaviour.report_usage:
        metadata["usage"] = usage
    frames.append(event_stream.event("metadata", msgspec.json.encode(metadata)))
    return await _send_frames(request, behaviour, frames)


async def _send_frames(
    request: web.Request, behaviour: CallBehaviour, frames: list[bytes]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "application/vnd.amazon.eventstream"})
    await response.prepare(request)
    corrupt_at = request.app[STATE].config.corrupt_frame_after_chunks
    for index, frame in enumerate(frames):
        if index == corrupt_at:
            frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])  # the message CRC no longer holds
        if behaviour.drop_after_chunks is not None and index >= behaviour.drop_after_chunks:
            await response.write(
                event_stream.exception(
                    "modelStreamErrorException",
                    b'{"message":"fake model stream error","originalStatusCode":500}',
                )
            )
            break
        if behaviour.chunk_delay_ms > 0 and index:
            await asyncio.sleep(behaviour.chunk_delay_ms / 1000)
        await response.write(frame)
    await response.write_eof()
    return response
