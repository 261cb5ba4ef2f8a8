"""The per-call token budget (``X-Token-Budget``): output capped to what the budget leaves
after the input, calls whose input alone is over it refused, the budget on the event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.auth import hash_api_key
from gateway.routes import RoutesConfig
from gateway.usage_reading import estimate_tokens, request_chars
from tests.conftest import Providers
from tests.gateway_world import GatewayWorld, start_gateway
from tollgate.contract import Status
from tollgate.kafka import KafkaSettings
from tollgate.topics import Topics

BUDGETED = "sk-budgeted-0123456789"
OWN_HEADER = "sk-own-header-0123456789"
UNBUDGETED = "sk-unbudgeted-0123456789"
MESSAGES = [{"role": "user", "content": "Tell me about token budgets, briefly."}]
INPUT = estimate_tokens(request_chars({"messages": MESSAGES}))


@pytest.fixture
def budget_gateway(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> Iterator[GatewayWorld]:
    routes = RoutesConfig.model_validate(
        {
            "backends": [
                {"name": "openai", "kind": "openai", "base_url": providers.primary.base_url},
                {"name": "claude", "kind": "anthropic", "base_url": providers.claude.base_url},
            ],
            "models": {"gpt-4o-mini": ["openai"], "claude-sonnet-4": ["claude"]},
            "auth": {
                "api_keys": [
                    {
                        "id": "budgeted",
                        "key_sha256": hash_api_key(BUDGETED),
                        "tenant": "acme",
                        "token_budget": {"default": 200, "ceiling": 1000},
                    },
                    {
                        "id": "own-header",
                        "key_sha256": hash_api_key(OWN_HEADER),
                        "tenant": "acme",
                        "token_budget": {"header": "X-Call-Tokens", "default": 50},
                    },
                    {"id": "free", "key_sha256": hash_api_key(UNBUDGETED), "tenant": "acme"},
                ]
            },
        }
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world
    world.stop()


def client(gateway: GatewayWorld, key: str = BUDGETED) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def upstream_body(provider: Any) -> dict[str, Any]:
    return provider.stats()["last_request"]["body"]


def test_without_the_header_the_keys_default_budget_caps_the_output(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    raw = client(budget_gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert upstream_body(providers.primary)["max_completion_tokens"] == 200 - INPUT
    event = budget_gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.status, event.token_budget) == (Status.OK, 200)


def test_the_header_sets_the_budget_and_the_output_is_cut_to_what_it_leaves(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    raw = client(budget_gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Token-Budget": str(INPUT + 5)}
    )
    completion = raw.parse()
    assert upstream_body(providers.primary)["max_completion_tokens"] == 5
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.choices[0].finish_reason == "length"
    event = budget_gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.token_budget, event.output_tokens) == (INPUT + 5, 5)


def test_a_lower_limit_of_the_clients_own_is_kept(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    client(budget_gateway).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=3
    )
    body = upstream_body(providers.primary)
    assert body["max_tokens"] == 3
    assert "max_completion_tokens" not in body


def test_a_call_whose_input_alone_is_over_budget_is_refused_before_any_model(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(budget_gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Token-Budget": str(INPUT)}
        )
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "token_budget_exceeded"
    assert f"budget of {INPUT}" in error["message"]
    assert providers.primary.stats()["total"] == 0
    event = budget_gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.token_budget) == (
        Status.REJECTED_BUDGET,
        400,
        INPUT,
    )
    assert event.total_tokens == 0


@pytest.mark.parametrize(("value", "problem"), [("5000", "ceiling of 1000"), ("ten", "whole")])
def test_a_budget_over_the_keys_ceiling_or_not_a_number_is_refused(
    budget_gateway: GatewayWorld, providers: Providers, value: str, problem: str
) -> None:
    with pytest.raises(openai.BadRequestError, match=problem):
        client(budget_gateway).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Token-Budget": value}
        )
    assert providers.primary.stats()["total"] == 0


def test_anthropic_calls_are_budgeted_and_refused_in_anthropics_format(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    claude = anthropic.Anthropic(base_url=budget_gateway.url, api_key=BUDGETED, max_retries=0)
    message = claude.messages.create(
        model="claude-sonnet-4",
        max_tokens=1000,
        messages=MESSAGES,
        extra_headers={"X-Token-Budget": str(INPUT + 4)},
    )
    assert upstream_body(providers.claude)["max_tokens"] == 4
    assert message.usage.output_tokens == 4
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model="claude-sonnet-4",
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"X-Token-Budget": "1"},
        )
    assert raised.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_streamed_call_is_capped_as_well(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    stream = client(budget_gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"X-Token-Budget": str(INPUT + 2)},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "tok0 tok1"


def test_the_header_name_is_the_keys_own_and_a_key_without_a_budget_ignores_it(
    budget_gateway: GatewayWorld, providers: Providers
) -> None:
    raw = client(budget_gateway, OWN_HEADER).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_headers={"X-Call-Tokens": str(INPUT + 7), "X-Token-Budget": "1"},
    )
    assert upstream_body(providers.primary)["max_completion_tokens"] == 7
    assert budget_gateway.event_for(raw.headers["x-tollgate-request-id"]).token_budget == INPUT + 7

    free = client(budget_gateway, UNBUDGETED).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Token-Budget": "1"}
    )
    assert "max_completion_tokens" not in upstream_body(providers.primary)
    assert budget_gateway.event_for(free.headers["x-tollgate-request-id"]).token_budget is None
