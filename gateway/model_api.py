"""The model APIs around the calls: list and retrieve models, count a prompt's tokens.

A request carrying ``anthropic-version`` (the anthropic SDK always sends it) gets
Anthropic's shapes: the paged ``{"data": [...], "has_more", "first_id", "last_id"}`` list
of the models callable through the Messages API, and its errors. Any other request gets
OpenAI's. None of these calls a model, so none yields a usage event.

``POST /v1/messages/count_tokens`` is forwarded to an Anthropic backend, which counts
exactly; a backend without the endpoint (Bedrock) is answered by the gateway's estimate
(one token per four characters, the metering heuristic), marked by the
``x-tollgate-token-count: estimated`` header.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from yarl import URL

from gateway.errors import (
    Dialect,
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    UpstreamFailed,
    error_body,
)
from gateway.model_list import ListedModel, ModelDirectory
from gateway.proxy import Proxy
from gateway.routes import BackendConfig, BackendKind
from gateway.upstream import client_headers, upstream_headers, upstream_url
from gateway.upstream_client import UpstreamError
from gateway.usage_reading import estimate_tokens, request_chars
from tollgate.errors import TollgateError

_CREATED_AT = "1970-01-01T00:00:00Z"
_MAX_PAGE = 1000


def _dialect(request: web.Request) -> Dialect:
    return Dialect.ANTHROPIC if "anthropic-version" in request.headers else Dialect.OPENAI


def _error(error: GatewayError, dialect: Dialect) -> web.Response:
    return web.json_response(
        error_body(error, dialect), status=error.http_status, headers=error.headers()
    )


def list_models_handler(proxy: Proxy, directory: ModelDirectory):  # type: ignore[no-untyped-def]
    async def list_models(request: web.Request) -> web.Response:
        dialect = _dialect(request)
        try:
            principal = await proxy.authenticator.authenticate(request.headers)
            models = await directory.list_for(principal)
            if dialect is Dialect.ANTHROPIC:
                return web.json_response(_anthropic_page(request, models))
        except GatewayError as error:
            return _error(error, dialect)
        return web.json_response(
            {"object": "list", "data": [_openai_model(model) for model in models]}
        )

    return list_models


def retrieve_model_handler(proxy: Proxy, directory: ModelDirectory):  # type: ignore[no-untyped-def]
    async def retrieve_model(request: web.Request) -> web.Response:
        dialect = _dialect(request)
        name = request.match_info["model_id"]
        try:
            principal = await proxy.authenticator.authenticate(request.headers)
            model = directory.lookup(name, principal)
            if model is None or (dialect is Dialect.ANTHROPIC and not model.anthropic):
                raise ModelNotFound(f"the model {name!r} does not exist", param="model")
        except GatewayError as error:
            return _error(error, dialect)
        body = _anthropic_model(model) if dialect is Dialect.ANTHROPIC else _openai_model(model)
        return web.json_response(body)

    return retrieve_model


def count_tokens_handler(proxy: Proxy):  # type: ignore[no-untyped-def]
    async def count_tokens(request: web.Request) -> web.Response:
        try:
            principal = await proxy.authenticator.authenticate(request.headers)
            payload, raw = await proxy.read_json(request)
            model = payload.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidRequest("`model` is required and must be a string", param="model")
            if not principal.may_use(model):
                raise ModelNotAllowed(f"this key may not use model {model!r}", param="model")
            backends = proxy.backends_for(model, Dialect.ANTHROPIC)
            backend = backends[0]
            if backend.kind is not BackendKind.ANTHROPIC:
                estimate = estimate_tokens(request_chars(payload))
                return web.json_response(
                    {"input_tokens": estimate}, headers={"x-tollgate-token-count": "estimated"}
                )
            return await _forward_count(proxy, request, raw, model, backend)
        except GatewayError as error:
            return _error(error, Dialect.ANTHROPIC)

    return count_tokens


async def _forward_count(
    proxy: Proxy, request: web.Request, raw: bytes, model: str, backend: BackendConfig
) -> web.Response:
    try:
        upstream = await proxy.upstream.post(
            URL(upstream_url(backend, "/v1/messages/count_tokens", model)),
            raw,
            upstream_headers(backend, request.headers, proxy.secrets.get(backend.name)).items(),
            connect_timeout_s=backend.connect_timeout_s,
            timeout_s=backend.timeout_s,
            streamed=False,
        )
        try:
            body = await upstream.read()
        finally:
            upstream.release()
    except (TimeoutError, UpstreamError, TollgateError):
        raise UpstreamFailed(f"backend {backend.name} could not count tokens") from None
    return web.Response(
        status=upstream.status, body=body, headers=client_headers(upstream.header_pairs)
    )


def _openai_model(model: ListedModel) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}


def _anthropic_model(model: ListedModel) -> dict[str, Any]:
    return {"type": "model", "id": model.id, "display_name": model.id, "created_at": _CREATED_AT}


def _anthropic_page(request: web.Request, models: list[ListedModel]) -> dict[str, Any]:
    """One page of Anthropic's list: ``limit`` models after ``after_id`` or before
    ``before_id``, as the anthropic SDK's auto-paging expects."""
    ids = [model.id for model in models if model.anthropic]
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("`limit` must be an integer", param="limit") from None
    if not 1 <= limit <= _MAX_PAGE:
        raise InvalidRequest(f"`limit` must be between 1 and {_MAX_PAGE}", param="limit")
    start, end = 0, len(ids)
    if "after_id" in query:
        start = ids.index(query["after_id"]) + 1 if query["after_id"] in ids else len(ids)
        end = min(start + limit, len(ids))
    elif "before_id" in query:
        end = ids.index(query["before_id"]) if query["before_id"] in ids else 0
        start = max(end - limit, 0)
    else:
        end = min(limit, len(ids))
    page = ids[start:end]
    by_id = {model.id: model for model in models}
    has_more = end < len(ids) if "before_id" not in query else start > 0
    return {
        "data": [_anthropic_model(by_id[name]) for name in page],
        "has_more": has_more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
