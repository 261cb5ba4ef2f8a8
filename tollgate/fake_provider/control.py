"""Control endpoints under ``/_fake/``: steer a running provider and see what reached it.

``POST /_fake/config`` takes a JSON object of config fields and answers the whole new
config; ``GET /_fake/config`` answers the current one; ``GET /_fake/stats`` answers the
request counts and the last request (headers, credentials verbatim, body);
``POST /_fake/reset`` restores the start-up config and clears the stats.
"""

from __future__ import annotations

import dataclasses

import msgspec
from aiohttp import web

from tollgate.fake_provider.endpoint import STATE, json_answer
from tollgate.fake_provider.errors import ConfigError


async def get_config(request: web.Request) -> web.Response:
    return json_answer(dataclasses.asdict(request.app[STATE].config), {})


async def patch_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = msgspec.json.decode(await request.read())
        if not isinstance(changes, dict):
            raise ConfigError("the config patch must be a JSON object")
        state.config = state.config.patched(changes)
    except (msgspec.DecodeError, ConfigError, TypeError) as error:
        return json_answer({"error": {"message": str(error), "type": "config_error"}}, {}, 400)
    return json_answer(dataclasses.asdict(state.config), {})


async def get_stats(request: web.Request) -> web.Response:
    return json_answer(request.app[STATE].stats.as_json(), {})


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.reset()
    return json_answer(dataclasses.asdict(state.config), {})


def add_control_routes(app: web.Application) -> None:
    app.router.add_get("/_fake/config", get_config)
    app.router.add_post("/_fake/config", patch_config)
    app.router.add_get("/_fake/stats", get_stats)
    app.router.add_post("/_fake/reset", reset)
