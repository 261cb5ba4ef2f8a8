"""``GET /v1/models``: the configured model names, in the dialect of whoever asks.

Both APIs serve the list at the same path; a client sending ``anthropic-version`` (as the
anthropic SDK always does) gets Anthropic's paged shape, anyone else gets OpenAI's.
"""

from __future__ import annotations

from aiohttp import web

from tollgate.fake_provider.endpoint import Call, json_answer

_CREATED = 1_700_000_000
_CREATED_AT = "2023-11-14T22:13:20Z"


async def list_models(call: Call) -> web.StreamResponse:
    """``GET /v1/models``."""
    names = call.state.config.models
    request_id = call.state.next_id("req_")
    if "anthropic-version" in call.request.headers:
        body = {
            "data": [
                {"type": "model", "id": n, "display_name": n, "created_at": _CREATED_AT}
                for n in names
            ],
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
        return json_answer(body, {"request-id": request_id})
    data = [{"id": n, "object": "model", "created": _CREATED, "owned_by": "fake"} for n in names]
    return json_answer({"object": "list", "data": data}, {"x-request-id": request_id})
