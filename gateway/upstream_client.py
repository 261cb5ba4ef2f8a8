"""HTTP/1.1 to the backends: keep-alive connections, one write per request, a C parser.

Calling a backend is most of what the gateway does per call, so this path is lean: a
pooled connection, the request's head and body in one write, the answer parsed by
``httptools`` (llhttp) as it arrives. It does what a proxy needs and no more: POST, fixed
or chunked or until-close bodies, TLS, timeouts, and back-pressure while a slow client
reads a stream. (aiohttp's client spent about four times the CPU per call here.)

Errors are ``UpstreamError``s, or ``TimeoutError`` when the backend is too slow:

- ``UpstreamUnreachable``: no connection could be made.
- ``UpstreamBrokeOff``: the connection failed or the answer was malformed mid-way.

A connection is reused only after its answer was read to the end; a reused connection that
the backend closed while idle is retried once on a new one, as nothing was answered on it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httptools
from multidict import CIMultiDict
from yarl import URL

PAUSE_ABOVE_BYTES = 256 * 1024
"""A stream's unread bytes past which reading from the backend pauses."""

_Key = tuple[str, str, int]
"""(scheme, host, port) of a pool of connections."""


class UpstreamError(Exception):
    """Calling the backend failed."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the backend."""


class UpstreamBrokeOff(UpstreamError):
    """The backend's connection failed, or its answer was malformed, mid-way."""


class UpstreamClient:
    """Pools of keep-alive connections, per backend address."""

    def __init__(self, keepalive_s: float = 60.0, max_idle_per_host: int = 256) -> None:
        self._keepalive_s = keepalive_s
        self._max_idle = max_idle_per_host
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def post(
        self,
        url: URL,
        body: bytes,
        headers: Iterable[tuple[str, str]],
        *,
        connect_timeout_s: float,
        timeout_s: float,
        streamed: bool,
    ) -> UpstreamResponse:
        """Send a POST; return once the answer's status line and headers are in.

        ``timeout_s`` bounds the whole answer, or, when ``streamed``, each wait for more of
        it (headers first, then every read).
        """
        if self._closed:
            raise UpstreamUnreachable("the upstream client is closed")
        key: _Key = (url.scheme, url.raw_host or "", url.port or 0)
        deadline = None if streamed else asyncio.get_running_loop().time() + timeout_s
        request = _request_bytes(url, body, headers)
        for attempt in range(2):
            connection = self._idle_connection(key)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(key, url, connect_timeout_s, deadline)
            response = UpstreamResponse(self, key, connection, deadline, timeout_s)
            connection.begin(response)
            connection.transport.write(request)
            try:
                await response.wait_for_head()
            except UpstreamBrokeOff:
                response.release()
                if reused and attempt == 0 and not connection.received_any:
                    continue  # closed by the backend while idle: it never saw this request
                raise
            except BaseException:
                response.release()
                raise
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for connection in pool:
                connection.close()
        self._idle.clear()

    def _idle_connection(self, key: _Key) -> _Connection | None:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            connection = pool.pop()
            if connection.usable and now - connection.idle_since < self._keepalive_s:
                return connection
            connection.close()
        return None

    def _release(self, key: _Key, connection: _Connection) -> None:
        pool = self._idle.setdefault(key, deque())
        if self._closed or len(pool) >= self._max_idle or not connection.usable:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        pool.append(connection)

    async def _connect(
        self, key: _Key, url: URL, connect_timeout_s: float, deadline: float | None
    ) -> _Connection:
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        if deadline is not None:
            connect_timeout_s = min(connect_timeout_s, deadline - loop.time())
        try:
            async with asyncio.timeout(max(connect_timeout_s, 0)):
                _, connection = await loop.create_connection(
                    _Connection, host, port or (443 if tls else 80), ssl=tls
                )
        except TimeoutError:
            raise UpstreamUnreachable(f"connecting to {url.host} timed out") from None
        except OSError as error:
            raise UpstreamUnreachable(f"cannot connect to {url.host}: {error}") from None
        return connection


class UpstreamResponse:
    """A backend's answer: status and headers at once, the body as it comes."""

    def __init__(
        self,
        client: UpstreamClient,
        key: _Key,
        connection: _Connection,
        deadline: float | None,
        read_timeout_s: float,
    ) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._client = client
        self._key = key
        self._connection: _Connection | None = connection
        self._deadline = deadline
        self._read_timeout_s = read_timeout_s
        self._head_done = False
        self._complete = False
        self._failure: UpstreamError | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def header_pairs(self) -> list[tuple[str, str]]:
        """The answer's headers as (name, value), in order, text as it came."""
        return [
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self.raw_headers
        ]

    @property
    def headers(self) -> CIMultiDict[str]:
        """The answer's headers, to look up by name."""
        return CIMultiDict(self.header_pairs)

    async def read(self) -> bytes:
        """The whole body."""
        while not self._complete:
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self.release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces, as they arrive."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._connection is not None and self._buffered < PAUSE_ABOVE_BYTES // 2:
                    self._connection.resume()
                yield chunk
            elif self._complete:
                self.release()
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it was read to
        the end, else it is closed."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.end()
        if self._complete and connection.keep_alive:
            self._client._release(self._key, connection)
        else:
            connection.close()

    async def wait_for_head(self) -> None:
        while not self._head_done:
            await self._wait()

    async def _wait(self) -> None:
        if self._failure is not None:
            self.release()
            raise self._failure
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A timer handle rather than asyncio.timeout: this runs once or more per call.
        when = self._deadline if self._deadline is not None else loop.time() + self._read_timeout_s
        timer = loop.call_at(when, _time_out, waiter)
        try:
            await waiter
        except BaseException:
            self.release()  # a timeout or a cancel: the connection is in an unknown state
            raise
        finally:
            timer.cancel()
            self._waiter = None
        if self._failure is not None:
            self.release()
            raise self._failure

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- from the connection's parser ------------------------------------------------------

    def _on_head(self, status: int) -> None:
        self.status = status
        self._head_done = True
        self._wake()

    def _on_body(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > PAUSE_ABOVE_BYTES and self._connection is not None:
            self._connection.pause()
        self._wake()

    def _on_complete(self) -> None:
        self._complete = True
        self._wake()

    def _on_failure(self, failure: UpstreamError) -> None:
        if not self._complete:
            self._failure = failure
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses each answer into the response it serves."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.response: UpstreamResponse | None = None
        self.keep_alive = True
        self.idle_since = 0.0
        self.received_any = False
        self._parser = httptools.HttpResponseParser(self)
        self._lost = False
        self._paused = False
        self._length_known = False
        self._interim = False

    @property
    def usable(self) -> bool:
        return not self._lost and self.keep_alive and not self.transport.is_closing()

    def begin(self, response: UpstreamResponse) -> None:
        self.response = response
        self.received_any = False
        self._length_known = False

    def end(self) -> None:
        self.response = None
        self.resume()

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and not self._lost:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and not self._lost:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.response is None:  # bytes nobody asked for: the connection is not sound
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.close()
            self.response._on_failure(UpstreamBrokeOff(f"malformed answer: {error}"))

    def eof_received(self) -> bool | None:
        self.keep_alive = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.keep_alive = False
        response = self.response
        if response is None:
            return
        if response._head_done and not response._complete and not self._length_known:
            response._on_complete()  # an answer that ends with its connection
        else:
            response._on_failure(UpstreamBrokeOff("the backend closed the connection"))

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._length_known = True

    def on_headers_complete(self) -> None:
        assert self.response is not None
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (103 Early Hints): the real one follows
            self._interim = True
            self.response.raw_headers.clear()
            self._length_known = False
            return
        self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
        self.response._on_head(status)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._on_body(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        if self._interim:
            self._interim = False
            return
        self.response._on_complete()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _request_bytes(url: URL, body: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    target = url.raw_path_qs or "/"
    host = url.raw_host or ""
    if url.port is not None and not url.is_default_port():
        host = f"{host}:{url.port}"
    lines = [f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if "\n" not in value and "\r" not in value:  # never a header of its own
            lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    # Header text came in as UTF-8 with undecodable bytes escaped: it leaves as it came.
    return "".join(lines).encode("utf-8", "surrogateescape") + body
