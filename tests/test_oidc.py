"""JWTs from issuers named by their OpenID discovery URL, against a real local identity
provider: a discovery document and JWKS served on loopback, whose keys a test rotates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from gateway.auth import AuthConfig, Authenticator
from tests.conftest import Providers
from tests.gateway_world import GatewayWorld, routes_for, start_gateway
from tests.servers import AppServer
from tests.test_auth import (
    EC_KEY,
    OTHER_RSA_KEY,
    RSA_KEY,
    FakeClock,
    bearer,
    make_token,
    public_jwk,
    refused,
)
from tollgate.contract import Status
from tollgate.settings import KafkaSettings
from tollgate.topics import Topics

AUDIENCE = "api://tollgate"


@dataclass
class Tenant:
    """One issuer at the provider: its ``iss``, its keys, and where its JWKS lives."""

    issuer: str
    keys: list[dict[str, Any]]
    jwks_path: str


@dataclass
class IdentityProvider:
    """Discovery documents and JWKS on loopback, like Entra ID's v1 and v2 endpoints."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    fetches: dict[str, int] = field(default_factory=dict)
    base: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tenant}/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/{tenant}/keys/{name}", self.jwks)
        return app

    def discovery_url(self, tenant: str) -> str:
        return f"{self.base}/{tenant}/.well-known/openid-configuration"

    async def discovery(self, request: web.Request) -> web.Response:
        tenant = self.tenants[request.match_info["tenant"]]
        self._count(request.path)
        return web.json_response(
            {"issuer": tenant.issuer, "jwks_uri": f"{self.base}{tenant.jwks_path}"}
        )

    async def jwks(self, request: web.Request) -> web.Response:
        tenant = self.tenants[request.match_info["tenant"]]
        if request.path != tenant.jwks_path:
            raise web.HTTPNotFound()
        self._count(request.path)
        return web.json_response({"keys": tenant.keys})

    def _count(self, path: str) -> None:
        self.fetches[path] = self.fetches.get(path, 0) + 1


V2_ISSUER = "https://login.example.test/tid/v2.0"
V1_ISSUER = "https://sts.example.test/tid/"


def provider_world() -> IdentityProvider:
    return IdentityProvider(
        tenants={
            "v2": Tenant(V2_ISSUER, [public_jwk(RSA_KEY, "rsa-1")], "/v2/keys/a"),
            "v1": Tenant(V1_ISSUER, [public_jwk(OTHER_RSA_KEY, "v1-key")], "/v1/keys/a"),
        }
    )


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = provider_world()
    runner = web.AppRunner(provider.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    provider.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield provider
    await runner.cleanup()


def issuer_config(idp: IdentityProvider, tenant: str, **extra: Any) -> dict[str, Any]:
    return {
        "openid_config_url": idp.discovery_url(tenant),
        "audience": AUDIENCE,
        "jwks_cache_s": 300,
        **extra,
    }


def authenticator(idp: IdentityProvider, *configs: dict[str, Any], clock: FakeClock):  # type: ignore[no-untyped-def]
    jwt = list(configs) if len(configs) > 1 else configs[0]
    return Authenticator(AuthConfig.model_validate({"jwt": jwt}), clock=clock)


def v2_token(**claims: Any) -> str:
    return make_token(iss=V2_ISSUER, aud=AUDIENCE, **claims)


async def test_a_token_from_the_discovered_issuer_is_accepted_and_both_documents_cached(
    idp: IdentityProvider,
) -> None:
    auth = authenticator(idp, issuer_config(idp, "v2"), clock=FakeClock())
    for user in ("ada", "bob"):
        principal = await auth.authenticate(bearer(v2_token(sub=user, tenant="acme")))
        assert (principal.api_key_id, principal.tenant) == (f"jwt:{user}", "acme")
    assert idp.fetches == {"/v2/.well-known/openid-configuration": 1, "/v2/keys/a": 1}


async def test_a_token_naming_another_issuer_is_refused(idp: IdentityProvider) -> None:
    auth = authenticator(idp, issuer_config(idp, "v2"), clock=FakeClock())
    token = make_token(iss="https://evil.example.test/", aud=AUDIENCE)
    assert await refused(auth, bearer(token)) == "token issuer is not accepted"


async def test_a_rotated_key_is_fetched_when_a_token_names_it(idp: IdentityProvider) -> None:
    clock = FakeClock()
    auth = authenticator(idp, issuer_config(idp, "v2"), clock=clock)
    await auth.authenticate(bearer(v2_token(sub="ada")))
    idp.tenants["v2"].keys = [public_jwk(EC_KEY, "ec-rotated")]
    clock.now += 31
    rotated = make_token(EC_KEY, "ES256", kid="ec-rotated", iss=V2_ISSUER, aud=AUDIENCE)
    assert (await auth.authenticate(bearer(rotated))).api_key_id == "jwt:user-42"
    assert idp.fetches["/v2/keys/a"] == 2


async def test_a_moved_jwks_uri_is_followed_when_the_document_is_read_again(
    idp: IdentityProvider,
) -> None:
    clock = FakeClock()
    auth = authenticator(idp, issuer_config(idp, "v2"), clock=clock)
    await auth.authenticate(bearer(v2_token(sub="ada")))
    idp.tenants["v2"].jwks_path = "/v2/keys/b"
    idp.tenants["v2"].keys = [public_jwk(EC_KEY, "ec-b")]
    clock.now += 301
    moved = make_token(EC_KEY, "ES256", kid="ec-b", iss=V2_ISSUER, aud=AUDIENCE)
    assert (await auth.authenticate(bearer(moved))).api_key_id == "jwt:user-42"
    assert idp.fetches["/v2/keys/b"] == 1
    assert idp.fetches["/v2/.well-known/openid-configuration"] == 2


async def test_two_issuers_side_by_side_each_verify_their_own_tokens(
    idp: IdentityProvider,
) -> None:
    auth = authenticator(idp, issuer_config(idp, "v2"), issuer_config(idp, "v1"), clock=FakeClock())
    v1 = make_token(OTHER_RSA_KEY, kid="v1-key", iss=V1_ISSUER, aud=AUDIENCE, sub="old")
    assert (await auth.authenticate(bearer(v1))).api_key_id == "jwt:old"
    assert (await auth.authenticate(bearer(v2_token(sub="new")))).api_key_id == "jwt:new"

    # v2's key cannot vouch for a token claiming v1's issuer.
    forged = make_token(RSA_KEY, kid="v1-key", iss=V1_ISSUER, aud=AUDIENCE)
    assert await refused(auth, bearer(forged)) == "token signature is invalid"


@pytest.mark.parametrize(
    ("roles", "accepted"),
    [
        (["Gateway.User"], True),
        (["Reader", "Gateway.Admin"], True),
        ("Gateway.User", True),
        (["Reader"], False),
        (None, False),
    ],
)
async def test_required_claim_values_match_any_listed_value(
    idp: IdentityProvider, roles: Any, accepted: bool
) -> None:
    config = issuer_config(
        idp, "v2", required_claim_values={"roles": ["Gateway.User", "Gateway.Admin"]}
    )
    auth = authenticator(idp, config, clock=FakeClock())
    token = bearer(v2_token(roles=roles))
    if accepted:
        assert (await auth.authenticate(token)).tenant == "acme"
    else:
        assert "roles" in await refused(auth, token)


async def test_an_unreachable_discovery_url_refuses_tokens_clearly() -> None:
    config = {"openid_config_url": "http://127.0.0.1:9/none", "audience": AUDIENCE}
    auth = Authenticator(AuthConfig.model_validate({"jwt": config}), clock=FakeClock())
    message = await refused(auth, bearer(v2_token()))
    assert message == "cannot verify token: the issuer's discovery document failed"


def test_a_discovery_issuer_needs_no_configured_issuer_but_others_do() -> None:
    with pytest.raises(ValueError, match="issuer is required"):
        AuthConfig.model_validate({"jwt": {"audience": "a", "jwks_url": "https://i.test/k"}})
    with pytest.raises(ValueError, match="exactly one of"):
        AuthConfig.model_validate(
            {
                "jwt": {
                    "audience": "a",
                    "jwks_url": "https://i.test/k",
                    "openid_config_url": "https://i.test/.well-known/openid-configuration",
                }
            }
        )


@pytest.fixture
def oidc_gateway(
    kafka_settings: KafkaSettings,
    broker: str,
    topics: Topics,
    providers: Providers,
    tmp_path: Path,
) -> Iterator[tuple[GatewayWorld, IdentityProvider]]:
    provider = provider_world()
    server = AppServer(provider.app).start()
    provider.base = server.url
    routes = routes_for(
        [providers.primary.base_url],
        providers.claude.base_url,
        jwt=[issuer_config(provider, "v2"), issuer_config(provider, "v1")],
    )
    world = start_gateway(kafka_settings, broker, topics, routes, tmp_path / "spool")
    yield world, provider
    world.stop()
    server.stop()


def test_sdk_calls_with_tokens_of_two_discovered_issuers_are_metered_under_their_claims(
    oidc_gateway: tuple[GatewayWorld, IdentityProvider],
) -> None:
    gateway, _ = oidc_gateway
    tokens = {
        "umbrella": v2_token(sub="ada", tenant="umbrella"),
        "initech": make_token(
            OTHER_RSA_KEY, kid="v1-key", iss=V1_ISSUER, aud=AUDIENCE, tenant="initech"
        ),
    }
    for tenant, token in tokens.items():
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        event = gateway.event_for(raw.headers["x-tollgate-request-id"])
        assert (event.tenant, event.status) == (tenant, Status.OK)


async def test_an_issuers_token_budget_rule_applies_to_each_of_its_tokens(
    idp: IdentityProvider,
) -> None:
    config = issuer_config(idp, "v2", token_budget={"header": "X-Budget", "default": 500})
    principal = await authenticator(idp, config, clock=FakeClock()).authenticate(bearer(v2_token()))
    assert principal.token_budget is not None
    assert (principal.token_budget.header, principal.token_budget.default) == ("X-Budget", 500)
