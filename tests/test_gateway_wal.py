"""A call's usage event is on disk before its answer completes (the write-ahead log).

Checked the way a crash would see it: the moment the SDK has the whole answer (a JSON
body, or a stream through its last event), the event is in a segment file of the spool.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai

from gateway.app import PROXY
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GatewayWorld, routes_for, start_gateway
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "hello there"}]


def on_disk(spool_dir: Path, request_id: str) -> bool:
    return any(request_id.encode() in path.read_bytes() for path in spool_dir.glob("*.seg"))


def test_a_json_answers_event_is_on_disk_when_the_client_has_the_answer(
    gateway: GatewayWorld, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    for _ in range(20):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert on_disk(tmp_path / "spool", raw.headers["x-tollgate-request-id"])


def test_a_streams_event_is_on_disk_when_the_client_has_its_last_event(
    gateway: GatewayWorld, tmp_path: Path
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    for _ in range(10):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        chunks = list(raw.parse())  # the SDK stops at `data: [DONE]`
        assert chunks
        assert on_disk(tmp_path / "spool", raw.headers["x-tollgate-request-id"])


def test_an_anthropic_streams_event_is_on_disk_when_the_client_has_message_stop(
    gateway: GatewayWorld, tmp_path: Path
) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=ACME_KEY, max_retries=0)
    for _ in range(10):
        raw = claude.messages.with_raw_response.create(
            model="claude-sonnet-4", max_tokens=32, messages=MESSAGES, stream=True
        )
        events = [event.type for event in raw.parse()]
        assert events[-1] == "message_stop"
        assert on_disk(tmp_path / "spool", raw.headers["x-tollgate-request-id"])


def test_refused_calls_events_are_on_disk_too(gateway: GatewayWorld, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-a-key", max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    except openai.AuthenticationError as error:
        request_id = error.response.headers["x-tollgate-request-id"]
    assert on_disk(tmp_path / "spool", request_id)


def test_with_spool_fsync_s_0_every_answers_event_is_fsynced_before_it_completes(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> None:
    """``TOLLGATE_GATEWAY_SPOOL_FSYNC_S=0``: the log is opened for synchronous writes, so an
    answer's event is on disk (not only in the page cache) when the client has it."""
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = start_gateway(
        kafka_settings, broker, topics, routes, tmp_path / "spool", spool_fsync_s=0
    )
    try:
        assert world.server.call(lambda: world.server.app[PROXY].emitter._spool.synchronous)
        client = openai.OpenAI(base_url=f"{world.url}/v1", api_key=ACME_KEY, max_retries=0)
        for _ in range(5):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
            assert on_disk(tmp_path / "spool", raw.headers["x-tollgate-request-id"])
    finally:
        world.stop()
