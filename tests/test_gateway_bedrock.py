"""AWS Bedrock behind the gateway: the anthropic and openai SDKs, unchanged, to a fake
Bedrock that checks SigV4 signatures and answers in the binary event-stream framing.

The gateway finds its AWS credentials by botocore's standard chain (here: environment
variables) or uses a Bedrock API key; each test reads back the call's usage event and
prices it with the shipped catalog.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from gateway.auth import hash_api_key
from gateway.bedrock import BedrockBackends
from gateway.routes import RoutesConfig, model_of_deployment
from tests.gateway_world import GatewayWorld, start_gateway
from tollgate.contract import Operation, Status, UsageSource
from tollgate.errors import SettingsError
from tollgate.fake_provider import FakeProvider, count_prompt_tokens
from tollgate.fake_provider.bedrock import (
    FAKE_AWS_ACCESS_KEY_ID,
    FAKE_AWS_SECRET_ACCESS_KEY,
    FAKE_BEDROCK_API_KEY,
)
from tollgate.kafka import KafkaSettings
from tollgate.pricing import load_catalog
from tollgate.topics import Topics

KEY = "sk-bedrock-test-0123456789"
CLAUDE_ID = "us.anthropic.claude-sonnet-4-20250514-v1:0"
NOVA_ID = "amazon.nova-pro-v1:0"
MESSAGES = [{"role": "user", "content": "Say hello to Bedrock through the gateway, please."}]
ANSWER_16 = " ".join(f"tok{i}" for i in range(16))
CACHED = 8


@pytest.fixture(scope="module")
def bedrock() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The environment the standard credential chain reads: the fake's keys, nothing else."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_AWS_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET_ACCESS_KEY)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def bedrock_routes(base_url: str) -> RoutesConfig:
    return RoutesConfig.model_validate(
        {
            "backends": [
                {
                    "name": "bedrock-us",
                    "kind": "bedrock",
                    "region": "us-east-1",
                    "base_url": base_url,
                    "timeout_s": 5,
                    "deployments": {"claude-sonnet-4": CLAUDE_ID},
                },
                {
                    "name": "bedrock-by-key",
                    "kind": "bedrock",
                    "region": "eu-west-1",
                    "base_url": base_url,
                    "timeout_s": 5,
                    "api_key_env": "AWS_BEARER_TOKEN_BEDROCK",
                },
            ],
            "models": {"claude-sonnet-4": ["bedrock-us"], "amazon.nova-*": ["bedrock-by-key"]},
            "auth": {"api_keys": [{"id": "br", "key_sha256": hash_api_key(KEY), "tenant": "acme"}]},
        }
    )


@pytest.fixture
def gateway(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    bedrock: FakeProvider,
    aws_environment: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[GatewayWorld]:
    bedrock.reset()
    bedrock.configure(cached_input_tokens=CACHED)
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        bedrock_routes(bedrock.base_url),
        tmp_path / "spool",
        secrets={"bedrock-by-key": FAKE_BEDROCK_API_KEY},
    )
    yield world
    world.stop()


def claude(gateway: GatewayWorld) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)


def gpt_style(gateway: GatewayWorld) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)


def assert_priced(event, model_id: str, rates: tuple[str, str, str]) -> None:  # type: ignore[no-untyped-def]
    """The catalog prices the event by Bedrock's id, each part at its own rate."""
    priced = load_catalog().price(event)
    assert priced.price_version.startswith(f"aws.bedrock/{model_id}@")
    assert not priced.price_fallback
    input_rate, output_rate, cache_read_rate = (Decimal(r) / 1_000_000 for r in rates)
    uncached = event.input_tokens - event.cache_read_input_tokens
    assert priced.input_cost_usd == input_rate * uncached
    assert priced.cache_read_cost_usd == cache_read_rate * event.cache_read_input_tokens
    assert priced.output_cost_usd == output_rate * event.output_tokens


def test_anthropic_sdk_to_claude_on_bedrock_is_signed_answered_and_metered(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    raw = claude(gateway).messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    )
    message = raw.parse()

    assert message.content[0].text == ANSWER_16
    prompt = count_prompt_tokens({"messages": MESSAGES})
    assert message.usage.cache_read_input_tokens == CACHED
    upstream = bedrock.stats()["last_request"]
    assert upstream["path"] == f"/model/{CLAUDE_ID}/invoke"
    assert upstream["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIA")
    assert "model" not in upstream["body"]
    assert upstream["body"]["anthropic_version"] == "bedrock-2023-05-31"
    assert KEY not in str(upstream)

    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.operation, event.status, event.http_status, event.streamed) == (
        Operation.MESSAGES,
        Status.OK,
        200,
        False,
    )
    assert (event.provider, event.backend) == ("aws.bedrock", "bedrock-us")
    assert (event.request_model, event.response_model) == ("claude-sonnet-4", CLAUDE_ID)
    assert (event.input_tokens, event.cache_read_input_tokens, event.output_tokens) == (
        prompt,
        CACHED,
        16,
    )
    assert event.usage_source is UsageSource.REPORTED
    assert_priced(event, CLAUDE_ID, ("3.00", "15.00", "0.30"))


def test_anthropic_sdk_stream_from_bedrock_event_stream_is_metered_from_its_metrics(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    with claude(gateway).messages.stream(
        model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-tollgate-request-id"]

    assert text == ANSWER_16
    assert final.usage.output_tokens == 16
    assert bedrock.stats()["last_request"]["path"].endswith("/invoke-with-response-stream")
    event = gateway.event_for(request_id)
    prompt = count_prompt_tokens({"messages": MESSAGES})
    assert (event.status, event.streamed, event.provider) == (Status.OK, True, "aws.bedrock")
    assert (event.input_tokens, event.cache_read_input_tokens, event.output_tokens) == (
        prompt,
        CACHED,
        16,
    )
    assert event.ttft_ms is not None
    assert_priced(event, CLAUDE_ID, ("3.00", "15.00", "0.30"))


def test_openai_sdk_to_claude_on_bedrock_goes_through_converse(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    raw = gpt_style(gateway).chat.completions.with_raw_response.create(
        model="claude-sonnet-4",
        max_tokens=10,
        messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == " ".join(f"tok{i}" for i in range(10))
    assert completion.choices[0].finish_reason == "length"
    upstream = bedrock.stats()["last_request"]
    assert upstream["path"] == f"/model/{CLAUDE_ID}/converse"
    assert upstream["body"]["system"] == [{"text": "Be brief."}]
    assert upstream["body"]["inferenceConfig"] == {"maxTokens": 10}
    usage = completion.usage
    assert usage is not None
    prompt = count_prompt_tokens(upstream["body"])
    assert usage.prompt_tokens == prompt
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == CACHED

    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.operation, event.status, event.provider) == (
        Operation.CHAT,
        Status.OK,
        "aws.bedrock",
    )
    assert (event.input_tokens, event.cache_read_input_tokens, event.output_tokens) == (
        prompt,
        CACHED,
        10,
    )
    assert_priced(event, CLAUDE_ID, ("3.00", "15.00", "0.30"))


def test_openai_sdk_stream_through_converse_stream_without_usage_chunk_unless_asked(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    client = gpt_style(gateway)
    with client.chat.completions.with_streaming_response.create(
        model="claude-sonnet-4", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-tollgate-request-id"]
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert not any('"usage"' in line for line in lines)

    asked = client.chat.completions.create(
        model="claude-sonnet-4",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(asked)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER_16
    final_usage = chunks[-1].usage
    assert final_usage is not None
    assert final_usage.completion_tokens == 16
    assert bedrock.stats()["last_request"]["path"] == f"/model/{CLAUDE_ID}/converse-stream"

    event = gateway.event_for(request_id)
    assert (event.status, event.streamed, event.output_tokens) == (Status.OK, True, 16)
    assert (event.cache_read_input_tokens, event.usage_source) == (CACHED, UsageSource.REPORTED)
    assert_priced(event, CLAUDE_ID, ("3.00", "15.00", "0.30"))


def test_a_bedrock_api_key_is_sent_as_a_bearer_token_for_a_pattern_routed_model(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    raw = gpt_style(gateway).chat.completions.with_raw_response.create(
        model=NOVA_ID, messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == ANSWER_16
    upstream = bedrock.stats()["last_request"]
    assert upstream["headers"]["authorization"] == f"Bearer {FAKE_BEDROCK_API_KEY}"
    event = gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.backend, event.response_model, event.output_tokens) == (
        "bedrock-by-key",
        NOVA_ID,
        16,
    )
    assert_priced(event, NOVA_ID, ("0.80", "3.20", "0.20"))


def test_a_failure_inside_a_200_bedrock_stream_reaches_each_sdk_as_an_error(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    bedrock.configure(drop_after_chunks=4)
    with pytest.raises(anthropic.APIStatusError, match="fake model stream error"):  # noqa: SIM117
        with claude(gateway).messages.stream(
            model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
        ) as stream:
            "".join(stream.text_stream)
    with pytest.raises(openai.APIError, match="fake model stream error"):
        list(
            gpt_style(gateway).chat.completions.create(
                model="claude-sonnet-4", messages=MESSAGES, stream=True
            )
        )
    events = gateway.events(2, lambda e: e.request_model == "claude-sonnet-4")
    assert [e.status for e in events] == [Status.UPSTREAM_ERROR, Status.UPSTREAM_ERROR]
    assert all(e.streamed for e in events)


def test_bedrock_throttling_reaches_each_sdk_as_its_rate_limit_error(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    bedrock.configure(fail_status=429)
    with pytest.raises(anthropic.RateLimitError):
        claude(gateway).messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as raised:
        gpt_style(gateway).chat.completions.create(model="claude-sonnet-4", messages=MESSAGES)
    assert raised.value.body["code"] == "ThrottlingException"  # type: ignore[index]


def test_embeddings_to_a_bedrock_model_are_refused_clearly(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    with pytest.raises(openai.BadRequestError, match="Bedrock backends serve chat"):
        gpt_style(gateway).embeddings.create(model=NOVA_ID, input="vectors")
    assert bedrock.stats()["total"] == 0


def test_a_wrong_aws_secret_fails_the_signature_check_and_no_answer_leaks(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    bedrock: FakeProvider,
    aws_environment: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    bedrock.reset()
    aws_environment.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    world = start_gateway(
        kafka_settings,
        broker,
        topics,
        bedrock_routes(bedrock.base_url),
        tmp_path / "spool",
        read=False,
        secrets={"bedrock-by-key": FAKE_BEDROCK_API_KEY},
    )
    try:
        with pytest.raises(anthropic.APIStatusError) as raised:
            claude(world).messages.create(model="claude-sonnet-4", max_tokens=8, messages=MESSAGES)
        assert raised.value.status_code == 502
        assert "refused the gateway's credentials" in str(raised.value)
        assert bedrock.stats()["total"] == 0  # refused before it was recorded
    finally:
        world.stop()


def test_without_aws_credentials_or_an_api_key_the_gateway_does_not_start() -> None:
    routes = bedrock_routes("http://127.0.0.1:9")
    with pytest.raises(SettingsError, match="bedrock-us: no AWS credentials"):
        BedrockBackends.from_routes(
            routes, {"bedrock-by-key": FAKE_BEDROCK_API_KEY}, find_credentials=lambda: None
        )
    # With an API key for each Bedrock backend, no AWS credentials are looked for.
    only_keys = RoutesConfig.model_validate(
        {
            "backends": [
                {"name": "k", "kind": "bedrock", "region": "us-west-2", "api_key_env": "K"}
            ],
            "models": {"m": ["k"]},
        }
    )
    assert only_keys.backend("k").base_url == "https://bedrock-runtime.us-west-2.amazonaws.com"
    BedrockBackends.from_routes(only_keys, {"k": "key"}, find_credentials=lambda: None)


def test_the_readme_routes_example_for_bedrock_and_azure_clients_is_a_valid_routes_file(
    repo_root: Path,
) -> None:
    readme = (repo_root / "README.md").read_text()
    block = readme.split("A routes file for both", 1)[1].split("```yaml\n", 1)[1]
    routes = RoutesConfig.model_validate(yaml.safe_load(block.split("```", 1)[0]))
    assert {b.kind.value for b in routes.backends} == {"bedrock", "openai"}
    assert model_of_deployment(routes, "gpt4o-prod") == "gpt-4o"
    assert routes.backend("bedrock-us").deployments["claude-sonnet-4"].startswith("us.anthropic.")


def test_a_bedrock_frame_with_a_bad_crc_ends_the_clients_stream_with_an_error(
    gateway: GatewayWorld, bedrock: FakeProvider
) -> None:
    bedrock.configure(corrupt_frame_after_chunks=3)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError, match="broke off"):  # noqa: SIM117
        with claude(gateway).messages.stream(
            model="claude-sonnet-4", max_tokens=64, messages=MESSAGES
        ) as stream:
            received += stream.text_stream
    assert "".join(received) == "tok0"  # the frames before the bad one, and nothing after
    event = gateway.events(1, lambda e: e.request_model == "claude-sonnet-4")[0]
    assert (event.status, event.streamed) == (Status.UPSTREAM_ERROR, True)
