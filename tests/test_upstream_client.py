"""The gateway's HTTP/1.1 client for backends, against real sockets that answer with exact
bytes: framing (length, chunked, until close), keep-alive and its failures, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from gateway.upstream_client import (
    PAUSE_ABOVE_BYTES,
    UpstreamBrokeOff,
    UpstreamClient,
    UpstreamUnreachable,
)
from tollgate.broker import free_port

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Answers one request (its head and body given); returns whether to keep the connection."""


@asynccontextmanager
async def backend(answer: Answer) -> AsyncIterator[tuple[URL, list[bytes]]]:
    """A server on loopback; yields its URL and every request it received, in full."""
    received: list[bytes] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                received.append(request)
                if not await answer(request, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield URL(f"http://127.0.0.1:{port}/v1/chat/completions?x=1"), received
    finally:
        server.close()


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    async def answer(request: bytes, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        return True

    return answer


async def post(
    client: UpstreamClient, url: URL, *, timeout_s: float = 5.0, streamed: bool = False
) -> tuple[int, bytes]:
    response = await client.post(
        url,
        b'{"model":"m"}',
        [("content-type", "application/json"), ("authorization", "Bearer up")],
        connect_timeout_s=2.0,
        timeout_s=timeout_s,
        streamed=streamed,
    )
    if streamed:
        return response.status, b"".join([chunk async for chunk in response.chunks()])
    return response.status, await response.read()


async def test_a_request_is_sent_whole_and_the_connection_is_kept_for_the_next() -> None:
    client = UpstreamClient()
    async with backend(fixed(b'{"ok":true}', b"X-Request-Id: r1\r\n")) as (url, received):
        for _ in range(3):
            assert await post(client, url) == (200, b'{"ok":true}')
        response = await client.post(
            url, b"{}", [], connect_timeout_s=1, timeout_s=1, streamed=False
        )
        assert response.headers["x-request-id"] == "r1"
        await response.read()
    await client.close()
    first = received[0].decode()
    assert first.startswith("POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert f"Host: {url.host}:{url.port}\r\n" in first
    assert "authorization: Bearer up\r\n" in first
    assert first.endswith('Content-Length: 13\r\n\r\n{"model":"m"}')
    assert len(received) == 4


async def test_chunked_and_until_close_bodies_are_read_whole() -> None:
    async def chunked(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        return True

    async def until_close(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        await writer.drain()
        return False

    client = UpstreamClient()
    async with backend(chunked) as (url, _):
        assert await post(client, url, streamed=True) == (200, b"data: one\n\ndata: two\n\n")
        assert await post(client, url) == (200, b"data: one\n\ndata: two\n\n")
    async with backend(until_close) as (url, _):
        assert await post(client, url) == (200, b"all of it")
        assert await post(client, url) == (200, b"all of it")  # on a new connection
    await client.close()


async def test_an_interim_answer_is_passed_over_for_the_real_one() -> None:
    async def early_hints(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
        await writer.drain()
        writer.write(b"HTTP/1.1 200 OK\r\nX-Real: yes\r\nContent-Length: 2\r\n\r\n{}")
        return True

    client = UpstreamClient()
    async with backend(early_hints) as (url, _):
        for _ in range(2):  # and the connection is sound for the next call
            response = await client.post(
                url, b"{}", [], connect_timeout_s=1, timeout_s=2, streamed=False
            )
            assert response.status == 200
            assert "link" not in response.headers
            assert response.headers["x-real"] == "yes"
            assert await response.read() == b"{}"
    await client.close()


async def test_a_connection_the_backend_closed_while_idle_is_replaced_without_an_error() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def answer(
        request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writers.append(writer)
        return await fixed(b"{}")(request, reader, writer)

    client = UpstreamClient()
    async with backend(answer) as (url, received):
        assert await post(client, url) == (200, b"{}")
        # The backend drops the idle connection just as the next request goes out on it
        # (no turn of the loop in between, so the client cannot have noticed).
        writers[0].transport.abort()
        assert await post(client, url) == (200, b"{}")
        assert len(received) == 2
        assert writers[1] is not writers[0]
    await client.close()


async def test_a_backend_that_breaks_off_or_answers_garbage_is_an_error() -> None:
    async def half(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        return False

    async def garbage(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return True

    client = UpstreamClient()
    async with backend(half) as (url, _):
        with pytest.raises(UpstreamBrokeOff):
            await post(client, url)
    async with backend(garbage) as (url, _):
        with pytest.raises(UpstreamBrokeOff):
            await post(client, url)
    with pytest.raises(UpstreamUnreachable):
        await post(client, URL(f"http://127.0.0.1:{free_port()}/v1/x"))
    await client.close()


async def test_a_whole_answer_must_come_in_time_and_a_stream_between_its_events() -> None:
    async def slow_events(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):  # 0.4 s in all, never 0.3 s without an event
            writer.write(b"2\r\nab\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        return True

    client = UpstreamClient()
    async with backend(slow_events) as (url, _):
        assert await post(client, url, timeout_s=0.3, streamed=True) == (200, b"ab" * 4)
        with pytest.raises(TimeoutError):
            await post(client, url, timeout_s=0.3)
        assert await post(client, url, timeout_s=2) == (200, b"ab" * 4)  # the pool is sound
    await client.close()


async def test_a_stream_read_slowly_pauses_the_backend_and_arrives_intact() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 4 * PAUSE_ABOVE_BYTES // len(piece)

    async def big(_: bytes, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (pieces * len(piece)))
        for _ in range(pieces):
            writer.write(piece)
            await writer.drain()  # waits while the client does not read
        return True

    client = UpstreamClient()
    async with backend(big) as (url, _):
        response = await client.post(
            url, b"{}", [], connect_timeout_s=1, timeout_s=5, streamed=True
        )
        received = bytearray()
        most_buffered = 0
        async for chunk in response.chunks():
            received += chunk
            most_buffered = max(most_buffered, response._buffered)
            await asyncio.sleep(0.002)
        assert received == piece * pieces
        assert most_buffered < 2 * PAUSE_ABOVE_BYTES
    await client.close()
