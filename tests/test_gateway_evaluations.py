"""``POST /v1/evaluations``: quality signals about calls, checked for their tenant, onto
their own topic. A real gateway on loopback, the OpenAI SDK for the calls, the real broker
for what comes out."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer

from gateway.app import EVALUATIONS
from gateway.request_ids import RequestIds, load_key
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, GLOBEX_KEY, GatewayWorld, routes_for, start_gateway
from tests.own_broker import kill, own_settings, start_own_broker, wait_until
from tollgate.contract import EvaluationEvent, decode
from tollgate.ids import uuid7
from tollgate.kafka import consumer_options
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "Who wrote the metering pipeline paper?"}]


def call(gateway: GatewayWorld, key: str = ACME_KEY) -> str:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    return raw.headers["x-tollgate-request-id"]


def call_claude(gateway: GatewayWorld, key: str = GLOBEX_KEY) -> str:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    )
    return raw.headers["x-tollgate-request-id"]


def evaluate(gateway: GatewayWorld, body: object, key: str | None = ACME_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{gateway.url}/v1/evaluations", json=body, headers=headers, timeout=10)


def read_evaluations(
    kafka: KafkaSettings, broker: str, topics: Topics, count: int, timeout_s: float = 20.0
) -> list[EvaluationEvent]:
    """At least ``count`` evaluations from the topic (all it holds, once it has that many)."""

    async def read() -> list[EvaluationEvent]:
        consumer = AIOKafkaConsumer(topics.evaluations, **consumer_options(kafka, broker))
        await consumer.start()
        found: list[EvaluationEvent] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(found) < count and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=300)).values():
                    found += [decode(r.value, EvaluationEvent) for r in records]
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [decode(r.value, EvaluationEvent) for r in records]
        finally:
            await consumer.stop()
        return found

    return asyncio.run(read())


def test_an_sdk_call_is_evaluated_with_its_request_id(
    gateway: GatewayWorld,
    providers: Providers,
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
) -> None:
    request_id = call(gateway)

    answer = evaluate(
        gateway,
        {
            "request_id": request_id,
            "name": "hallucination",
            "score_label": "hallucinated",
            "score_value": 1.0,
            "explanation": "cites a paper that does not exist",
            "evaluator": "judge-v1",
        },
    )

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["object"], body["request_id"], body["name"]) == (
        "evaluation",
        request_id,
        "hallucination",
    )
    [evaluation] = read_evaluations(kafka_settings, broker, topics, 1)
    assert str(evaluation.evaluation_id) == body["id"]
    assert str(evaluation.event_id) == request_id
    assert (evaluation.tenant, evaluation.api_key_id) == ("acme", "acme-app")
    assert (evaluation.score_label, evaluation.score_value) == ("hallucinated", 1.0)
    assert (evaluation.explanation, evaluation.evaluator) == (
        "cites a paper that does not exist",
        "judge-v1",
    )
    assert gateway.event_for(request_id).tenant == "acme"


def test_several_evaluations_of_one_call_are_all_kept(
    gateway: GatewayWorld,
    providers: Providers,
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
) -> None:
    request_id = call(gateway)
    bodies = [
        {"request_id": request_id, "name": "groundedness", "score_value": 0.2},
        {"request_id": request_id, "name": "groundedness", "score_value": 0.9},
        {"request_id": request_id, "name": "user_feedback", "score_label": "thumbs_up"},
    ]
    assert [evaluate(gateway, body).status_code for body in bodies] == [201, 201, 201]

    found = read_evaluations(kafka_settings, broker, topics, 3)
    assert sorted((e.name, e.score_value, e.score_label) for e in found) == [
        ("groundedness", 0.2, None),
        ("groundedness", 0.9, None),
        ("user_feedback", None, "thumbs_up"),
    ]
    assert len({e.evaluation_id for e in found}) == 3


def test_another_tenants_request_id_is_refused(
    gateway: GatewayWorld,
    providers: Providers,
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
) -> None:
    acme_call = call(gateway)
    globex_call = call_claude(gateway)

    refused = evaluate(
        gateway, {"request_id": acme_call, "name": "hallucination", "score_value": 1}, GLOBEX_KEY
    )
    taken = evaluate(
        gateway, {"request_id": globex_call, "name": "hallucination", "score_value": 0}, GLOBEX_KEY
    )
    also_refused = evaluate(
        gateway, {"request_id": globex_call, "name": "hallucination", "score_value": 1}
    )

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "request_not_found"
    assert refused.json()["error"]["param"] == "request_id"
    assert also_refused.status_code == 404
    assert taken.status_code == 201
    found = read_evaluations(kafka_settings, broker, topics, 1)
    assert [(str(e.event_id), e.tenant) for e in found] == [(globex_call, "globex")]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "hallucination", "score_value": 1}, "request_id"),
        ({"request_id": "not-an-id", "name": "x", "score_value": 1}, "request_id"),
        ({"request_id": "REQ", "score_value": 1}, "name"),
        ({"request_id": "REQ", "name": "hallucination"}, "score_value"),
        ({"request_id": "REQ", "name": "x", "score_value": "high"}, "score_value"),
        ({"request_id": "REQ", "name": "x", "score_value": True}, "score_value"),
        ({"request_id": "REQ", "name": "", "score_value": 1}, "name"),
        ({"request_id": "REQ", "name": "x", "score_label": "y" * 300}, "score_label"),
        ({"request_id": "REQ", "name": "n" * 257, "score_value": 1}, "name"),
        ({"request_id": "REQ", "name": "x", "score_value": 1, "explanation": 7}, "explanation"),
        ({"request_id": "REQ", "name": "x", "score_value": 1, "prompt": "hi"}, "prompt"),
    ],
)
def test_a_bad_evaluation_gets_a_400_naming_the_field(
    gateway: GatewayWorld, providers: Providers, body: dict[str, object], param: str
) -> None:
    if body.get("request_id") == "REQ":
        body = {**body, "request_id": call(gateway)}

    answer = evaluate(gateway, body)

    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"]


def test_an_evaluation_needs_credentials_and_json(
    gateway: GatewayWorld, providers: Providers
) -> None:
    request_id = call(gateway)
    body = {"request_id": request_id, "name": "x", "score_value": 1}

    unauthenticated = evaluate(gateway, body, key=None)
    wrong_key = evaluate(gateway, body, key="sk-nobody")
    not_json = httpx.post(
        f"{gateway.url}/v1/evaluations",
        content=b"name=x",
        headers={"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "text/plain"},
    )
    broken_json = httpx.post(
        f"{gateway.url}/v1/evaluations",
        content=b"{",
        headers={"Authorization": f"Bearer {ACME_KEY}", "Content-Type": "application/json"},
    )
    listed = httpx.get(f"{gateway.url}/v1/evaluations", headers={"Authorization": "Bearer x"})

    assert (unauthenticated.status_code, wrong_key.status_code) == (401, 401)
    assert unauthenticated.json()["error"]["code"] == "invalid_api_key"
    assert (not_json.status_code, broken_json.status_code) == (415, 400)
    assert listed.status_code == 405


def test_a_request_id_is_checked_by_another_instance_after_a_restart(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
) -> None:
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    first = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "a", read=False)
    try:
        request_id = call(first)
    finally:
        first.stop()
    second = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "b", read=False)
    try:
        answer = evaluate(second, {"request_id": request_id, "name": "x", "score_value": 1})
    finally:
        second.stop()

    assert answer.status_code == 201, answer.text


def test_a_request_id_binds_its_tenant_and_nothing_else(tmp_path: Path) -> None:
    ids = RequestIds(load_key(None, tmp_path / "k"))
    issued = [ids.issue("acme") for _ in range(200)]

    assert all(i.version == 7 for i in issued)
    assert len(set(issued)) == 200
    assert all(ids.belongs_to(i, "acme") for i in issued)
    assert sum(ids.belongs_to(i, "globex") for i in issued) <= 1  # 2^-24 each
    assert not any(ids.belongs_to(uuid7(), "acme") for _ in range(50))
    assert not ids.belongs_to(uuid.uuid4(), "acme")
    other_key = RequestIds(load_key("another deployment's secret", tmp_path / "unused"))
    assert not other_key.belongs_to(issued[0], "acme")
    assert RequestIds(load_key(None, tmp_path / "k")).belongs_to(issued[0], "acme")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


@pytest.mark.timeout(60)
async def test_evaluations_posted_while_the_broker_is_down_arrive_when_it_is_back(
    kafka_settings: KafkaSettings, own_broker_port: int, providers: Providers, tmp_path: Path
) -> None:
    kafka = own_settings(kafka_settings, own_broker_port)
    topics = kafka.topics()
    address = kafka.bootstrap_servers or ""
    first = await start_own_broker(own_broker_port, kafka, topics)
    routes = routes_for([providers.primary.base_url], providers.claude.base_url)
    world = await asyncio.to_thread(
        start_gateway, kafka, address, topics, routes, tmp_path / "spool", read=False
    )
    stats = world.server.call(lambda: world.server.app[EVALUATIONS].emitter.stats)
    try:
        request_id = await asyncio.to_thread(call, world)
        kill(first)
        posted = []
        for score in range(20):  # the broker is away: every one is still taken
            body = {"request_id": request_id, "name": "groundedness", "score_value": score / 20}
            answer = await asyncio.to_thread(evaluate, world, body)
            assert answer.status_code == 201
            posted.append(answer.json()["id"])
        await wait_until(lambda: stats.spooled >= 1, timeout_s=20)
        await start_own_broker(own_broker_port, kafka, topics)  # empty: Tansu keeps nothing
        # The log ships every evaluation; one the dead broker had taken is shipped again
        # (counted in ``resent`` too), and consumers drop the copy by its id.
        await wait_until(lambda: stats.emitted >= 20 and stats.spool_bytes == 0, timeout_s=30)
        assert stats.dropped == 0
    finally:
        await asyncio.to_thread(world.stop)

    found = await asyncio.to_thread(read_evaluations, kafka, address, topics, 20)
    assert sorted({str(e.evaluation_id) for e in found}) == sorted(posted)
