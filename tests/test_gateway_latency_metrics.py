"""Time to first token and output speed on the gateway's /metrics, per route model and
backend: labels from the routes file, never from what a caller sends."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai
import pytest

from gateway.routes import RoutesConfig
from tests.conftest import Providers
from tests.gateway_world import ACME_KEY, routes_for, start_gateway
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "Say hello."}]


def samples(text: str, name: str) -> dict[tuple[str, str], float]:
    """(model, backend) → value of ``name`` (a histogram's _count or _sum)."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf'^{name}\{{backend="([^"]*)",model="([^"]*)"\}} (\S+)$', line)
        if match:
            found[(match[2], match[1])] = float(match[3])
    return found


@pytest.fixture
def patterned_gateway(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
):  # type: ignore[no-untyped-def]
    routes = routes_for([providers.primary.base_url], providers.claude.base_url).model_dump()
    routes["models"]["gpt-4o-*"] = ["openai-0"]
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        RoutesConfig.model_validate(routes),
        tmp_path / "spool",
        read=False,
    )
    yield world
    world.stop()


def test_streamed_calls_are_timed_per_route_model_and_backend(
    patterned_gateway, providers: Providers
) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=f"{patterned_gateway.url}/v1", api_key=ACME_KEY, max_retries=0)
    for model in ("gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4o-any-name-a-caller-makes-up"):
        list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # not streamed

    text = httpx.get(f"{patterned_gateway.url}/metrics").text

    ttft = samples(text, "tollgate_gateway_time_to_first_token_seconds_count")
    assert ttft == {("gpt-4o-mini", "openai-0"): 1.0, ("gpt-4o-*", "openai-0"): 2.0}
    speed = samples(text, "tollgate_gateway_output_tokens_per_second_count")
    assert speed == {("gpt-4o-mini", "openai-0"): 2.0, ("gpt-4o-*", "openai-0"): 2.0}
    assert all(
        v > 0 for v in samples(text, "tollgate_gateway_output_tokens_per_second_sum").values()
    )
    ours = [line for line in text.splitlines() if "first_token" in line or "tokens_per" in line]
    assert ours
    assert not any("any-name-a-caller-makes-up" in line for line in ours)


def test_refused_calls_are_not_timed(patterned_gateway, providers: Providers) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(
        base_url=f"{patterned_gateway.url}/v1", api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)

    text = httpx.get(f"{patterned_gateway.url}/metrics").text
    assert samples(text, "tollgate_gateway_time_to_first_token_seconds_count") == {}
