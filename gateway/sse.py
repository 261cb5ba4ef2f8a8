"""Server-sent events, framed as they pass through: no buffering beyond one event."""

from __future__ import annotations

import re


class SSEFramer:
    """Cuts a byte stream into whole SSE events (each ending with a blank line)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Whole events completed by ``chunk``, each with its terminating blank line."""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = []
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            events.append(data[start : end + 2])
            start = end + 2
        self._buffer = data[start:]
        return events

    def rest(self) -> bytes:
        """Bytes of an unfinished event left when the stream ended."""
        rest, self._buffer = self._buffer, b""
        return rest


def parse_event(raw: bytes) -> tuple[str | None, bytes]:
    """The ``event:`` name (if any) and the joined ``data:`` payload of one event."""
    # Fast path for what providers send: one ``data:`` line, after one ``event:`` line
    # (Anthropic) or alone (OpenAI).
    head, first_newline = None, raw.find(b"\n")
    body = raw
    if raw.startswith(b"event: "):
        head, body = raw[7:first_newline], raw[first_newline + 1 :]
        first_newline = body.find(b"\n")
    if body.startswith(b"data: ") and first_newline == len(body) - 2:
        return (None if head is None else head.strip().decode(errors="replace")), body[6:-2]
    return _parse_event_slowly(raw)


def _parse_event_slowly(raw: bytes) -> tuple[str | None, bytes]:
    name = None
    data: list[bytes] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
    return name, b"\n".join(data)


_NULL_USAGE_TAIL = b',"usage":null}\n\n'
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')


def without_null_usage(event: bytes) -> bytes:
    """``event`` without the ``"usage": null`` member that asking for usage adds to every
    chunk, for a client that did not ask. A quote inside a JSON string is always escaped,
    so the pattern can only meet the member itself."""
    if event.endswith(_NULL_USAGE_TAIL):  # where OpenAI writes it: a slice does
        return event[: -len(_NULL_USAGE_TAIL)] + b"}\n\n"
    if b'"usage"' not in event:
        return event
    return _NULL_USAGE.sub(b"", event, count=1)
