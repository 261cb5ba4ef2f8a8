"""The model APIs: lists that show patterns by concrete names, retrieve, Anthropic's list and
token count, and the gateway's own 429s carrying the headers of its 200s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gateway.auth import hash_api_key
from gateway.routes import RoutesConfig
from tests.conftest import Providers
from tests.gateway_world import GatewayWorld, start_gateway
from tollgate.fake_provider import count_prompt_tokens
from tollgate.kafka import KafkaSettings
from tollgate.topics import Topics

KEY = "sk-models-test-0123456789"
CLAUDE_ONLY_KEY = "sk-models-claude-0123456789"
LIMITED_KEY = "sk-models-limited-0123456789"
MESSAGES = [{"role": "user", "content": "How many tokens is this prompt, please?"}]


@pytest.fixture
def models_gateway(
    kafka_settings: KafkaSettings, broker: str, topics: Topics, providers: Providers, tmp_path: Path
) -> Iterator[GatewayWorld]:
    routes = RoutesConfig.model_validate(
        {
            "backends": [
                {"name": "openai", "kind": "openai", "base_url": providers.primary.base_url},
                {"name": "claude", "kind": "anthropic", "base_url": providers.claude.base_url},
                {
                    "name": "listed",
                    "kind": "openai_compatible",
                    "base_url": providers.spare.base_url,
                    "models": ["llama-3.1-8b", "llama-3.1-70b", "mistral-7b"],
                },
            ],
            "models": {
                "gpt-4o-mini": ["openai"],
                "gpt-*": ["openai"],
                "text-embedding-*": ["openai"],
                "claude-*": ["claude"],
                "llama-*": ["listed"],
            },
            "auth": {
                "api_keys": [
                    {"id": "all", "key_sha256": hash_api_key(KEY), "tenant": "acme"},
                    {
                        "id": "claude-only",
                        "key_sha256": hash_api_key(CLAUDE_ONLY_KEY),
                        "tenant": "globex",
                        "allowed_models": ["claude-sonnet-4"],
                    },
                    {
                        "id": "limited",
                        "key_sha256": hash_api_key(LIMITED_KEY),
                        "tenant": "initech",
                        "rate_limit": {"calls": 1, "renewal_period_s": 60},
                    },
                ]
            },
        }
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world
    world.stop()


def openai_client(gateway: GatewayWorld, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def anthropic_client(gateway: GatewayWorld, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)


def test_the_models_list_shows_patterns_by_the_names_their_backends_serve(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    ids = [model.id for model in openai_client(models_gateway).models.list()]

    # Exact names first, then each pattern's advertised (or configured) names that it routes.
    assert ids == [
        "gpt-4o-mini",
        "gpt-4o",
        "text-embedding-3-small",
        "claude-haiku-3-5",
        "claude-sonnet-4",
        "llama-3.1-70b",
        "llama-3.1-8b",
    ]
    owners = {m.id: m.owned_by for m in openai_client(models_gateway).models.list()}
    assert owners["claude-sonnet-4"] == "anthropic"


def test_a_key_lists_only_the_models_it_may_call(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    listed = openai_client(models_gateway, CLAUDE_ONLY_KEY).models.list()
    assert [model.id for model in listed] == ["claude-sonnet-4"]


def test_every_listed_model_can_be_retrieved_and_an_unknown_one_is_404(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    client = openai_client(models_gateway)
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    assert client.models.retrieve("llama-3.1-8b").owned_by == "listed"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.NotFoundError):
        openai_client(models_gateway, CLAUDE_ONLY_KEY).models.retrieve("gpt-4o")


def test_the_anthropic_sdk_gets_claude_models_in_anthropic_format_page_by_page(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    client = anthropic_client(models_gateway)
    ids = [model.id for model in client.models.list(limit=1)]  # auto-paging, one per page
    assert ids == ["claude-haiku-3-5", "claude-sonnet-4"]
    model = client.models.retrieve("claude-sonnet-4")
    assert (model.type, model.display_name) == ("model", "claude-sonnet-4")
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_count_tokens_is_forwarded_to_the_anthropic_backend(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    counted = anthropic_client(models_gateway).messages.count_tokens(
        model="claude-sonnet-4", messages=MESSAGES
    )
    assert counted.input_tokens == count_prompt_tokens({"messages": MESSAGES})
    upstream = providers.claude.stats()["last_request"]
    assert upstream["path"] == "/v1/messages/count_tokens"
    assert KEY not in str(upstream)


def test_count_tokens_for_a_model_the_key_may_not_use_is_refused(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    with pytest.raises(anthropic.PermissionDeniedError):
        anthropic_client(models_gateway, CLAUDE_ONLY_KEY).messages.count_tokens(
            model="claude-haiku-3-5", messages=MESSAGES
        )


def test_the_gateways_own_429_carries_the_rate_limit_headers_of_its_200s(
    models_gateway: GatewayWorld, providers: Providers
) -> None:
    client = openai_client(models_gateway, LIMITED_KEY)
    admitted = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    refused = raised.value.response.headers
    names = [name for name in admitted.headers if name.startswith("x-ratelimit-")]
    assert names
    assert all(name in refused for name in names)
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert refused["x-ratelimit-limit-requests"] == "1"
    assert 0 < float(refused["x-ratelimit-reset-requests"].rstrip("s")) <= 60


def test_the_models_list_without_credentials_is_401_in_each_format(
    models_gateway: GatewayWorld,
) -> None:
    plain = httpx.get(f"{models_gateway.url}/v1/models")
    assert plain.status_code == 401
    assert plain.json()["error"]["code"] == "invalid_api_key"
    as_anthropic = httpx.get(
        f"{models_gateway.url}/v1/models", headers={"anthropic-version": "2023-06-01"}
    )
    assert as_anthropic.json()["error"]["type"] == "authentication_error"
