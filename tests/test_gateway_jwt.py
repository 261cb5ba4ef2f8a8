"""JWT bearer tokens through the gateway, from both SDKs: claims become the event's
tenant, team and user; a token that does not check out is a 401 in the caller's format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Providers
from tests.gateway_world import GatewayWorld, routes_for, start_gateway
from tests.test_auth import AUDIENCE, ISSUER, RSA_KEY, make_token, public_jwk
from tollgate.contract import Status
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def jwt_gateway(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
) -> Iterator[GatewayWorld]:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1")]}))
    routes = routes_for(
        [providers.primary.base_url],
        providers.claude.base_url,
        jwt={
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_file": str(jwks),
            "required_claims": ["team"],
        },
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world
    world.stop()


def openai_client(gateway: GatewayWorld, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)


def test_a_valid_token_is_metered_under_its_claims(jwt_gateway: GatewayWorld) -> None:
    token = make_token(sub="user-42", tenant="umbrella", team="research")
    raw = openai_client(jwt_gateway, token).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    event = jwt_gateway.event_for(raw.headers["x-tollgate-request-id"])
    assert (event.tenant, event.team, event.user, event.api_key_id) == (
        "umbrella",
        "research",
        "user-42",
        "jwt:user-42",
    )
    assert event.status is Status.OK


def test_the_anthropic_sdk_authenticates_with_a_token_too(jwt_gateway: GatewayWorld) -> None:
    claude = anthropic.Anthropic(
        base_url=jwt_gateway.url, api_key=make_token(tenant="umbrella"), max_retries=0
    )
    message = claude.messages.create(model="claude-sonnet-4", max_tokens=5, messages=MESSAGES)
    (event,) = jwt_gateway.events(1)
    assert (event.tenant, event.output_tokens) == ("umbrella", message.usage.output_tokens)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (make_token(exp=1_000_000_000, iat=999_999_000), "expired"),
        (make_token(aud="someone-else"), "audience"),
        (make_token(iss="https://evil.example/"), "issuer"),
        (make_token(team=None), "team"),
        (jwt.encode({"tenant": "acme"}, "s" * 32, algorithm="HS256"), "HS256"),
        (
            make_token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "signature",
        ),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "missing-claim", "wrong-alg", "bad-sig"],
)
def test_a_token_that_does_not_check_out_is_a_401_saying_why(
    jwt_gateway: GatewayWorld, token: str, reason: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(jwt_gateway, token).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert reason in raised.value.message
    assert token not in raised.value.message
    event = jwt_gateway.event_for(raised.value.response.headers["x-tollgate-request-id"])
    assert (event.status, event.http_status, event.tenant) == (Status.REJECTED_AUTH, 401, None)
