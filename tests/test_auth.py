"""The gateway's door: API keys and JWTs, against keys made here and a real JWKS server."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from multidict import CIMultiDict
from pydantic import ValidationError

from gateway import jwt_auth
from gateway.auth import AuthConfig, Authenticator, hash_api_key
from gateway.errors import Unauthenticated
from gateway.principal import Principal, RateLimit
from tollgate.errors import SettingsError

ACME_KEY = "sk-acme-test-0123456789"
GLOBEX_KEY = "sk-globex-test-0123456789"
ISSUER = "https://login.example.test/"
AUDIENCE = "tollgate"

API_KEYS = [
    {
        "id": "acme-app",
        "key_sha256": hash_api_key(ACME_KEY),
        "tenant": "acme",
        "team": "search",
        "user": "ada",
        "tags": {"env": "prod"},
    },
    {
        "id": "globex-app",
        "key_sha256": hash_api_key(GLOBEX_KEY),
        "tenant": "globex",
        "allowed_models": ["claude-sonnet-4"],
        "rate_limit": {"calls": 3, "renewal_period_s": 60},
    },
]

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


def make_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "tenant": "acme",
        "team": "search",
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def make_token(
    key: Any = RSA_KEY, algorithm: str = "RS256", kid: str | None = "rsa-1", **claims: Any
) -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(make_claims(**claims), key, algorithm=algorithm, headers=headers)


def unsigned_token(**claims: Any) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{part(make_claims(**claims))}."


def bearer(token: str) -> CIMultiDict[str]:
    return CIMultiDict({"Authorization": f"Bearer {token}"})


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]})
    )
    return path


@pytest.fixture
def make_authenticator(jwks_file: Path) -> Callable[..., Authenticator]:
    def make(**jwt_config: Any) -> Authenticator:
        config = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(jwks_file)}
        config.update(jwt_config)
        return Authenticator(AuthConfig.model_validate({"api_keys": API_KEYS, "jwt": config}))

    return make


@pytest.fixture
def authenticator(make_authenticator: Callable[..., Authenticator]) -> Authenticator:
    return make_authenticator(models_claim="models", rate_limit={"calls": 5, "renewal_period_s": 1})


async def refused(authenticator: Authenticator, headers: Any) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await authenticator.authenticate(headers)
    return caught.value.message


# API keys


async def test_api_key_as_bearer_token_maps_to_its_principal(authenticator: Authenticator) -> None:
    principal = await authenticator.authenticate(bearer(ACME_KEY))
    assert principal == Principal(
        tenant="acme", api_key_id="acme-app", team="search", user="ada", tags={"env": "prod"}
    )


async def test_api_key_in_x_api_key_maps_to_its_principal(authenticator: Authenticator) -> None:
    principal = await authenticator.authenticate(CIMultiDict({"X-Api-Key": GLOBEX_KEY}))
    assert principal.tenant == "globex"
    assert principal.api_key_id == "globex-app"
    assert principal.allowed_models == frozenset({"claude-sonnet-4"})
    assert principal.rate_limit == RateLimit(calls=3, renewal_period_s=60)


async def test_plain_dict_headers_are_read_whatever_their_case() -> None:
    authenticator = Authenticator(AuthConfig.model_validate({"api_keys": API_KEYS}))
    principal = await authenticator.authenticate({"X-API-KEY": ACME_KEY})
    assert principal.api_key_id == "acme-app"


async def test_unknown_api_key_is_refused(authenticator: Authenticator) -> None:
    assert await refused(authenticator, bearer("sk-nobody")) == "invalid API key"


async def test_missing_credentials_are_refused_saying_how_to_send_them(
    authenticator: Authenticator,
) -> None:
    message = await refused(authenticator, CIMultiDict({"content-type": "application/json"}))
    assert message.startswith("missing API key")
    assert "x-api-key" in message


async def test_basic_authorization_is_refused_naming_the_scheme(
    authenticator: Authenticator,
) -> None:
    message = await refused(authenticator, CIMultiDict({"Authorization": "Basic dXNlcjpwdw=="}))
    assert "Authorization scheme" in message


async def test_default_config_refuses_everyone() -> None:
    assert await refused(Authenticator(AuthConfig()), bearer(ACME_KEY)) == "invalid API key"


async def test_jwt_shaped_token_is_an_api_key_when_no_issuer_is_configured() -> None:
    authenticator = Authenticator(AuthConfig.model_validate({"api_keys": API_KEYS}))
    assert await refused(authenticator, bearer(make_token())) == "invalid API key"


# JWTs


async def test_valid_jwt_maps_claims_to_the_principal(authenticator: Authenticator) -> None:
    token = make_token(models=["gpt-4o", "claude-sonnet-4"])
    principal = await authenticator.authenticate(bearer(token))
    assert principal == Principal(
        tenant="acme",
        api_key_id="jwt:user-42",
        team="search",
        user="user-42",
        allowed_models=frozenset({"gpt-4o", "claude-sonnet-4"}),
        rate_limit=RateLimit(calls=5, renewal_period_s=1),
    )


async def test_ec_signed_jwt_is_accepted(authenticator: Authenticator) -> None:
    token = make_token(EC_KEY, "ES256", kid="ec-1", tenant="globex", team=None)
    principal = await authenticator.authenticate(CIMultiDict({"x-api-key": token}))
    assert (principal.tenant, principal.team, principal.allowed_models) == ("globex", None, None)


async def test_claim_names_follow_the_config(make_authenticator: Callable[..., Authenticator]):
    authenticator = make_authenticator(tenant_claim="org", team_claim="dept", user_claim="email")
    token = make_token(tenant=None, org="initech", dept="tps", email="bob@initech.test")
    principal = await authenticator.authenticate(bearer(token))
    assert (principal.tenant, principal.team, principal.user) == (
        "initech",
        "tps",
        "bob@initech.test",
    )


async def test_jwt_without_subject_is_anonymous(authenticator: Authenticator) -> None:
    principal = await authenticator.authenticate(bearer(make_token(sub=None)))
    assert principal.api_key_id == "jwt:anonymous"


async def test_expired_jwt_is_refused(make_authenticator: Callable[..., Authenticator]) -> None:
    token = make_token(exp=int(time.time()) - 120, iat=int(time.time()) - 600)
    assert await refused(make_authenticator(), bearer(token)) == "token has expired"


async def test_expiry_within_leeway_is_accepted(make_authenticator: Callable[..., Authenticator]):
    token = make_token(exp=int(time.time()) - 10)
    principal = await make_authenticator(leeway_s=30).authenticate(bearer(token))
    assert principal.tenant == "acme"


TEN_YEARS_S = 10 * 365 * 86400


async def test_a_ten_year_token_is_refused_under_a_maximum_lifetime(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    now = int(time.time())
    token = make_token(iat=now, exp=now + TEN_YEARS_S)
    message = await refused(make_authenticator(max_lifetime_s=3600), bearer(token))
    assert message == "token lifetime is over the maximum of 3600 s this gateway accepts"


async def test_a_token_issued_long_ago_for_long_is_refused_under_a_maximum_lifetime(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    now = int(time.time())
    token = make_token(iat=now - 7 * 86400, exp=now + 600)  # a week-long token, nearly done
    assert "lifetime is over the maximum" in await refused(
        make_authenticator(max_lifetime_s=3600), bearer(token)
    )


async def test_a_token_within_the_maximum_lifetime_is_accepted(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    now = int(time.time())
    authenticator = make_authenticator(max_lifetime_s=3600)
    assert (await authenticator.authenticate(bearer(make_token(iat=now, exp=now + 3600)))).tenant
    assert (await authenticator.authenticate(bearer(make_token(iat=None, exp=now + 60)))).tenant


async def test_without_a_maximum_lifetime_a_long_token_is_accepted_as_before(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    now = int(time.time())
    token = make_token(iat=now, exp=now + TEN_YEARS_S)
    assert (await make_authenticator().authenticate(bearer(token))).tenant == "acme"


async def test_jwt_without_expiry_is_refused(authenticator: Authenticator) -> None:
    message = await refused(authenticator, bearer(make_token(exp=None)))
    assert message == "token is missing required claim 'exp'"


async def test_jwt_not_yet_valid_is_refused(authenticator: Authenticator) -> None:
    token = make_token(nbf=int(time.time()) + 300)
    assert await refused(authenticator, bearer(token)) == "token is not yet valid"


async def test_jwt_for_another_audience_is_refused(authenticator: Authenticator) -> None:
    token = make_token(aud="someone-else")
    assert await refused(authenticator, bearer(token)) == "token audience is not accepted"


async def test_any_configured_audience_is_accepted(
    make_authenticator: Callable[..., Authenticator],
):
    authenticator = make_authenticator(audience=["other", "someone-else"])
    principal = await authenticator.authenticate(bearer(make_token(aud="someone-else")))
    assert principal.tenant == "acme"


async def test_jwt_from_another_issuer_is_refused(authenticator: Authenticator) -> None:
    token = make_token(iss="https://evil.example.test/")
    assert await refused(authenticator, bearer(token)) == "token issuer is not accepted"


async def test_hmac_signed_jwt_is_refused(authenticator: Authenticator) -> None:
    token = make_token("a-shared-secret-of-at-least-32-bytes!", "HS256")
    assert await refused(authenticator, bearer(token)) == "token algorithm HS256 is not allowed"


async def test_unsigned_jwt_is_refused(authenticator: Authenticator) -> None:
    assert await refused(authenticator, bearer(unsigned_token())) == (
        "token algorithm none is not allowed"
    )


async def test_algorithm_off_the_allowlist_is_refused(authenticator: Authenticator) -> None:
    token = make_token(algorithm="RS384")
    assert await refused(authenticator, bearer(token)) == "token algorithm RS384 is not allowed"


async def test_allowlisted_algorithm_other_than_the_keys_default_is_accepted(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    authenticator = make_authenticator(algorithms=["RS384"])
    principal = await authenticator.authenticate(bearer(make_token(algorithm="RS384")))
    assert principal.tenant == "acme"


async def test_algorithm_that_does_not_fit_the_key_is_refused(authenticator: Authenticator):
    token = make_token(EC_KEY, "ES256", kid="rsa-1")
    message = await refused(authenticator, bearer(token))
    assert message == "token algorithm ES256 does not match its signing key"


async def test_jwt_signed_by_another_key_is_refused(authenticator: Authenticator) -> None:
    token = make_token(OTHER_RSA_KEY, kid="rsa-1")
    assert await refused(authenticator, bearer(token)) == "token signature is invalid"


async def test_jwt_with_unknown_key_id_is_refused(authenticator: Authenticator) -> None:
    message = await refused(authenticator, bearer(make_token(kid="rsa-9")))
    assert message == "token signing key 'rsa-9' is not known"


async def test_jwt_without_key_id_needs_a_single_key_set(
    tmp_path: Path, authenticator: Authenticator
) -> None:
    assert "no key id" in await refused(authenticator, bearer(make_token(kid=None)))
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"keys": [public_jwk(RSA_KEY, "rsa-1")]}))
    config = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": str(single)}
    lone = Authenticator(AuthConfig.model_validate({"jwt": config}))
    assert (await lone.authenticate(bearer(make_token(kid=None)))).tenant == "acme"


async def test_jwt_without_tenant_is_refused(authenticator: Authenticator) -> None:
    message = await refused(authenticator, bearer(make_token(tenant=None)))
    assert message == "token is missing required claim 'tenant'"


async def test_jwt_missing_a_configured_required_claim_is_refused(
    make_authenticator: Callable[..., Authenticator],
) -> None:
    authenticator = make_authenticator(required_claims=["email"])
    message = await refused(authenticator, bearer(make_token()))
    assert message == "token is missing required claim 'email'"
    principal = await authenticator.authenticate(bearer(make_token(email="a@acme.test")))
    assert principal.tenant == "acme"


async def test_models_claim_that_is_not_a_list_is_refused(authenticator: Authenticator) -> None:
    message = await refused(authenticator, bearer(make_token(models="gpt-4o")))
    assert message == "token claim 'models' must list model names"


async def test_garbled_jwt_is_refused_as_malformed(authenticator: Authenticator) -> None:
    assert await refused(authenticator, bearer("eyJhbGciOi.eyJzdWIi.c2ln")) == "token is malformed"


async def test_refusals_never_echo_the_token(authenticator: Authenticator) -> None:
    for token in (make_token(aud="x"), make_token(OTHER_RSA_KEY), unsigned_token()):
        message = await refused(authenticator, bearer(token))
        assert token not in message
        assert token.split(".")[1] not in message


async def test_verified_jwt_is_not_verified_again(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    decode = jwt.decode
    monkeypatch.setattr(jwt_auth.jwt, "decode", lambda *a, **k: calls.append(1) or decode(*a, **k))
    token = make_token()
    first = await authenticator.authenticate(bearer(token))
    second = await authenticator.authenticate(bearer(token))
    assert first == second
    assert len(calls) == 1


# Configuration


def jwt_config(**overrides: Any) -> dict[str, Any]:
    config = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": "https://idp.test/jwks.json"}
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize(
    ("algorithms", "problem"),
    [
        (["none"], "'none' is not allowed"),
        (["HS256"], "symmetric"),
        (["RS256", "HS512"], "symmetric"),
        (["RS257"], "unknown algorithm"),
    ],
)
def test_config_refuses_unsafe_algorithms(algorithms: list[str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        AuthConfig.model_validate({"jwt": jwt_config(algorithms=algorithms)})


@pytest.mark.parametrize(
    ("jwks_file", "jwks_url"), [(None, None), ("/etc/jwks.json", "https://idp.test/jwks")]
)
def test_config_needs_exactly_one_key_source(jwks_file: str | None, jwks_url: str | None) -> None:
    with pytest.raises(ValidationError, match="exactly one of jwks_file and jwks_url"):
        AuthConfig.model_validate({"jwt": jwt_config(jwks_file=jwks_file, jwks_url=jwks_url)})


def test_config_refuses_a_jwks_url_that_is_not_http() -> None:
    with pytest.raises(ValidationError, match="jwks_url"):
        AuthConfig.model_validate({"jwt": jwt_config(jwks_url="file:///etc/jwks.json")})


@pytest.mark.parametrize("digest", ["ABCDEF" * 10 + "ABCD", "abc", hash_api_key("k") + "0"])
def test_config_refuses_a_key_hash_that_is_not_sha256_hex(digest: str) -> None:
    key = {"id": "k", "key_sha256": digest, "tenant": "acme"}
    with pytest.raises(ValidationError, match="64 lowercase hex"):
        AuthConfig.model_validate({"api_keys": [key]})


def test_config_refuses_duplicate_key_ids() -> None:
    keys = [API_KEYS[0], {**API_KEYS[1], "id": "acme-app"}]
    with pytest.raises(ValidationError, match="duplicate id"):
        AuthConfig.model_validate({"api_keys": keys})


def test_config_refuses_one_key_listed_twice() -> None:
    keys = [API_KEYS[0], {**API_KEYS[1], "key_sha256": API_KEYS[0]["key_sha256"]}]
    with pytest.raises(ValidationError, match="duplicate key_sha256"):
        AuthConfig.model_validate({"api_keys": keys})


def test_config_refuses_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="extra"):
        AuthConfig.model_validate({"api_keys": [{**API_KEYS[0], "secret": "x"}]})
    with pytest.raises(ValidationError, match="frozen"):
        AuthConfig().api_keys = []  # type: ignore[misc]


def test_config_refuses_a_non_positive_rate_limit() -> None:
    key = {**API_KEYS[0], "rate_limit": {"calls": 0, "renewal_period_s": 60}}
    with pytest.raises(ValidationError, match="calls"):
        AuthConfig.model_validate({"api_keys": [key]})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read JWKS file"),
        ("{not json", "invalid JWKS file"),
        ('{"keys": []}', "no usable public signing key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no usable public signing key"),
    ],
)
def test_unusable_jwks_file_stops_start_up(tmp_path: Path, content: str | None, problem: str):
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    config = AuthConfig.model_validate({"jwt": jwt_config(jwks_url=None, jwks_file=str(path))})
    with pytest.raises(SettingsError, match=problem):
        Authenticator(config)


# JWKS served over HTTP


@dataclass
class JwksServer:
    """An identity provider's JWKS endpoint on loopback, whose keys a test can rotate."""

    keys: list[dict[str, Any]]
    fetches: int = 0
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class FakeClock:
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer(keys=[public_jwk(RSA_KEY, "rsa-1")])
    app = web.Application()
    app.router.add_get("/jwks.json", server.serve)
    server.runner = web.AppRunner(app, access_log=None)
    await server.runner.setup()
    await web.TCPSite(server.runner, "127.0.0.1", 0).start()
    server.url = f"http://127.0.0.1:{server.runner.addresses[0][1]}/jwks.json"
    yield server
    await server.stop()


def remote_authenticator(server: JwksServer, clock: FakeClock) -> Authenticator:
    config = AuthConfig.model_validate({"jwt": jwt_config(jwks_url=server.url, jwks_cache_s=300)})
    return Authenticator(config, clock=clock)


async def test_keys_are_fetched_from_the_jwks_url_once_and_cached(jwks_server: JwksServer):
    authenticator = remote_authenticator(jwks_server, FakeClock())
    for user in ("ada", "bob", "cy"):
        principal = await authenticator.authenticate(bearer(make_token(sub=user)))
        assert principal.api_key_id == f"jwt:{user}"
    assert jwks_server.fetches == 1


async def test_cached_keys_are_refreshed_after_jwks_cache_s(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    authenticator = remote_authenticator(jwks_server, clock)
    await authenticator.authenticate(bearer(make_token(sub="ada")))
    clock.now += 301
    await authenticator.authenticate(bearer(make_token(sub="bob")))
    assert jwks_server.fetches == 2


async def test_rotated_key_is_fetched_when_a_token_names_it(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    authenticator = remote_authenticator(jwks_server, clock)
    await authenticator.authenticate(bearer(make_token(sub="ada")))
    jwks_server.keys = [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-2")]
    clock.now += 31
    rotated = make_token(EC_KEY, "ES256", kid="ec-2", sub="bob")
    assert (await authenticator.authenticate(bearer(rotated))).api_key_id == "jwt:bob"
    assert jwks_server.fetches == 2


async def test_unknown_key_ids_refetch_at_most_once_per_30_s(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    authenticator = remote_authenticator(jwks_server, clock)
    await authenticator.authenticate(bearer(make_token(sub="ada")))
    for _ in range(5):
        clock.now += 5
        message = await refused(authenticator, bearer(make_token(kid="junk", sub="eve")))
        assert message == "token signing key 'junk' is not known"
    assert jwks_server.fetches == 1
    clock.now += 10
    await refused(authenticator, bearer(make_token(kid="junk", sub="eve")))
    assert jwks_server.fetches == 2


async def test_held_keys_outlive_an_unreachable_issuer(jwks_server: JwksServer) -> None:
    clock = FakeClock()
    authenticator = remote_authenticator(jwks_server, clock)
    await authenticator.authenticate(bearer(make_token(sub="ada")))
    await jwks_server.stop()
    clock.now += 301
    principal = await authenticator.authenticate(bearer(make_token(sub="bob")))
    assert principal.api_key_id == "jwt:bob"


async def test_unreachable_issuer_without_held_keys_refuses_tokens(jwks_server: JwksServer):
    authenticator = remote_authenticator(jwks_server, FakeClock())
    await jwks_server.stop()
    message = await refused(authenticator, bearer(make_token()))
    assert message == "cannot verify token: the issuer's keys could not be fetched"
