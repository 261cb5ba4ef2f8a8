"""``POST /v1/evaluations``: a quality signal about a call, onto the evaluations topic.

The caller authenticates as for a call (an API key or a JWT), names the call by the
``x-tollgate-request-id`` the gateway answered it with, and says what was judged::

    {"request_id": "0193…", "name": "hallucination", "score_label": "hallucinated",
     "score_value": 1.0, "explanation": "cites a paper that does not exist",
     "evaluator": "judge-gpt-4o"}

A score value, a label, or both (OTel ``gen_ai.evaluation.result``). A key may evaluate
only calls of its own tenant: the request id carries a tenant-bound MAC
(``gateway.request_ids``), so any gateway instance checks it with no lookup; an id of
another tenant's call is answered as an unknown one (404), never told apart. Each POST is
one new immutable record: several evaluations of one call all count.

The record goes out through the same emitter machinery as usage events (its own
instance, topic and spool), so a broker outage delays evaluations and loses none.
Errors are OpenAI-style JSON, as on every other gateway endpoint.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from gateway.auth import Authenticator
from gateway.emitter import UsageEmitter
from gateway.errors import (
    Dialect,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestNotFound,
    UnsupportedMediaType,
    error_body,
)
from gateway.request_ids import RequestIds
from tollgate.contract import EvaluationEvent, decode, encode
from tollgate.errors import ContractError
from tollgate.ids import uuid7

PATH = "/v1/evaluations"
_FIELDS = frozenset(
    {"request_id", "name", "score_value", "score_label", "explanation", "evaluator"}
)
_json_decode = msgspec.json.Decoder().decode


class EvaluationDesk:
    """Takes evaluations in, checks whose call they judge, emits them."""

    def __init__(
        self,
        authenticator: Authenticator,
        request_ids: RequestIds,
        emitter: UsageEmitter,
        *,
        max_body_bytes: int,
    ) -> None:
        self.authenticator = authenticator
        self.request_ids = request_ids
        self.emitter = emitter
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: web.Request) -> web.Response:
        try:
            principal = await self.authenticator.authenticate(request.headers)
            body = await self._read_object(request)
            request_id = _request_id(body.get("request_id"))
            if not self.request_ids.belongs_to(request_id, principal.tenant):
                raise RequestNotFound(
                    f"no call with request id {request_id} for this tenant", param="request_id"
                )
            evaluation = _evaluation(body, request_id, principal.tenant, principal.api_key_id)
        except GatewayError as error:
            return web.json_response(
                error_body(error, Dialect.OPENAI),
                status=error.http_status,
                headers=error.headers(),
            )
        self.emitter.emit(evaluation)  # type: ignore[arg-type]  # never raises
        return web.json_response(_answer(evaluation), status=201)

    async def _read_object(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise UnsupportedMediaType(
                f"expected Content-Type application/json, got {request.content_type!r}"
            )
        too_large = PayloadTooLarge(f"request body is over the {self.max_body_bytes}-byte limit")
        try:
            raw = await request.read()  # the app's client_max_size bounds it
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(raw) > self.max_body_bytes:
            raise too_large
        try:
            body = _json_decode(raw)
        except msgspec.DecodeError as error:
            raise InvalidRequest(f"request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field `{unknown[0]}`", param=unknown[0])
        return body


def _request_id(value: object) -> uuid.UUID:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(
            "`request_id` is required: the call's x-tollgate-request-id", param="request_id"
        )
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(
            f"`request_id` is not a request id: {value[:64]!r}", param="request_id"
        ) from None


def _evaluation(
    body: dict[str, Any], request_id: uuid.UUID, tenant: str, api_key_id: str
) -> EvaluationEvent:
    """The contract judges the fields; its errors name them as the caller wrote them."""
    fields = {k: v for k, v in body.items() if k != "request_id"}
    if isinstance(fields.get("score_value"), bool):  # JSON true is no score
        raise InvalidRequest("`score_value` must be a number", param="score_value")
    record = {
        "schema_version": EvaluationEvent.schema_version(),
        "evaluation_id": str(uuid7()),
        "event_id": str(request_id),
        "time": datetime.now(UTC).isoformat(),
        "tenant": tenant,
        "api_key_id": api_key_id[:256],
        **fields,
    }
    if "name" not in fields:
        raise InvalidRequest("`name` is required (hallucination, groundedness…)", param="name")
    try:
        return decode(msgspec.json.encode(record), EvaluationEvent)
    except ContractError as error:
        field = {"event_id": "request_id"}.get(error.field or "", error.field)
        reason = str(error).partition(": ")[2] or str(error)
        raise InvalidRequest(f"`{field}`: {reason}" if field else reason, param=field) from None


def _answer(evaluation: EvaluationEvent) -> dict[str, Any]:
    fields = msgspec.json.decode(encode(evaluation))
    return {
        "object": "evaluation",
        "id": fields.pop("evaluation_id"),
        "request_id": fields.pop("event_id"),
        **{k: v for k, v in fields.items() if k not in ("schema_version", "tenant")},
    }
