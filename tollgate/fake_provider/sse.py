"""Server-sent event frames and the paced writer that sends them.

Frames are bytes built ahead of sending. A token frame is encoded once per call as a
``FrameTemplate`` and filled with each token's cached JSON, so a long stream costs byte joins,
not JSON encodes. With no chunk delay the whole stream goes out in one write.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web

from tollgate.fake_provider.behaviour import CallBehaviour

HOLE = "\x00hole\x00"
_ENCODED_HOLE = msgspec.json.encode(HOLE)
_EVENT_STREAM_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
}


def frame(payload: Any, *, event: str | None = None) -> bytes:
    """One SSE frame: optional ``event:`` line, then ``data:`` with the JSON payload."""
    return _prefix(event) + msgspec.json.encode(payload) + b"\n\n"


class FrameTemplate:
    """A frame encoded once with ``HOLE`` values, each filled later with ready JSON bytes."""

    __slots__ = ("_parts",)

    def __init__(self, payload: Any, *, event: str | None = None) -> None:
        self._parts = frame(payload, event=event).split(_ENCODED_HOLE)

    def fill(self, *values: bytes) -> bytes:
        """The frame with its holes, in encoding order, replaced by ``values``."""
        parts = self._parts
        if len(values) != len(parts) - 1:
            raise ValueError(f"template has {len(parts) - 1} holes, got {len(values)} values")
        if len(values) == 1:
            return parts[0] + values[0] + parts[1]
        pieces = [parts[0]]
        for value, part in zip(values, parts[1:], strict=True):
            pieces += (value, part)
        return b"".join(pieces)


async def send_event_stream(
    request: web.Request,
    behaviour: CallBehaviour,
    frames: Sequence[bytes],
    headers: Mapping[str, str],
) -> web.StreamResponse:
    """Send ``frames`` paced by ``chunk_delay_ms``; cut the connection after
    ``drop_after_chunks`` frames if asked, leaving the client a truncated chunked body."""
    response = web.StreamResponse(headers={**_EVENT_STREAM_HEADERS, **headers})
    await response.prepare(request)
    drop_after = behaviour.drop_after_chunks
    dropping = drop_after is not None and drop_after < len(frames)
    to_send = frames[:drop_after] if dropping else frames
    if behaviour.chunk_delay_ms <= 0:
        await response.write(b"".join(to_send))
    else:
        delay_s = behaviour.chunk_delay_ms / 1000
        for index, chunk in enumerate(to_send):
            if index:
                await asyncio.sleep(delay_s)
            await response.write(chunk)
    if dropping:
        # close() flushes what was written, then ends TCP without the final empty chunk.
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


@functools.cache
def _prefix(event: str | None) -> bytes:
    return b"data: " if event is None else f"event: {event}\ndata: ".encode()
