"""``/v1/quality`` and ``/v1/latency`` over a seeded lake, served by a real uvicorn: the
answer is the query run on the lake, a tenant key sees its own calls only, and the
planted bad model shows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from analytics import quality_queries, queries
from analytics.lake_db import Lake
from analytics.reporting import BackgroundServer, create_app
from analytics.seed_evaluations import WORST_MODEL
from tests.test_reporting_api import (
    ADMIN_KEY,
    World,
    assert_same_rows,
    keys_for,
    lake_range,
    rows,
    seeded_lake,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path = seeded_lake(tmp_path_factory)
    lake = Lake(path)
    start, end = lake_range(lake)
    by_tenant = lake.frame(queries.top_spenders(start, end, by="tenant", n=5))
    tenant, other = by_tenant["tenant"][0], by_tenant["tenant"][1]
    keys, tenant_key = keys_for(tmp_path_factory.mktemp("keys"), tenant)
    with BackgroundServer(create_app(path, keys)) as server:
        yield World(path, lake, server.url, start, end, tenant, other, tenant_key)
    lake.close()


@pytest.fixture
def admin(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


@pytest.fixture
def tenant(world: World) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.url, headers={"x-api-key": world.tenant_key}) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "params", "kwargs"),
    [
        (
            "quality",
            {"evaluation": "hallucination", "label": "hallucinated", "group_by": "model"},
            {"evaluation": "hallucination", "label": "hallucinated", "group_by": ["model"]},
        ),
        (
            "quality",
            {"evaluation": "groundedness", "good_min_score": "0.5", "group_by": "backend",
             "granularity": "day"},
            {"evaluation": "groundedness", "good_min_score": 0.5, "group_by": ["backend"],
             "granularity": "day"},
        ),
        (
            "quality",
            {"evaluation": "hallucination", "label": "hallucinated", "group_by": "team"},
            {"evaluation": "hallucination", "label": "hallucinated", "group_by": ["team"]},
        ),
        ("latency", {}, {}),
        ("latency", {"group_by": "provider", "granularity": "week"},
         {"group_by": ["provider"], "granularity": "week"}),
    ],
)  # fmt: skip
@pytest.mark.parametrize("as_tenant", [False, True])
def test_each_quality_endpoint_answers_what_its_query_answers(
    world: World,
    admin: httpx.Client,
    tenant: httpx.Client,
    path: str,
    params: dict[str, Any],
    kwargs: dict[str, Any],
    as_tenant: bool,
) -> None:
    client = tenant if as_tenant else admin
    got = rows(client.get(f"/v1/{path}", params={**world.range(), **params, "limit": 10_000}))
    scope = world.tenant if as_tenant else None
    expected = world.lake.arrow(
        getattr(quality_queries, path)(world.start, world.end, tenant_scope=scope, **kwargs)
    )
    assert expected.num_rows > 0
    assert_same_rows(got, expected)


def test_the_planted_bad_model_has_the_highest_hallucination_rate(
    world: World, admin: httpx.Client
) -> None:
    params = {"evaluation": "hallucination", "label": "hallucinated", "group_by": "model"}
    found = rows(admin.get("/v1/quality", params={**world.range(), **params}))
    judged = [row for row in found if row["evaluated_calls"]]

    worst = max(judged, key=lambda row: row["label_rate"])
    assert worst["model"] == WORST_MODEL
    assert all(0 < row["coverage"] < 1 for row in judged)


def test_a_tenant_key_sees_the_quality_of_its_own_calls_only(
    world: World, tenant: httpx.Client
) -> None:
    params = {"evaluation": "hallucination", "group_by": "tenant", "tenant": world.other}
    assert rows(tenant.get("/v1/quality", params={**world.range(), **params})) == []
    own = rows(tenant.get("/v1/quality", params={**world.range(), "evaluation": "x",
                                                  "group_by": "tenant"}))  # fmt: skip
    assert [row["tenant"] for row in own] == [world.tenant]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({}, "evaluation"),
        ({"evaluation": ""}, "evaluation"),
        ({"evaluation": "x", "good_min_score": "nan"}, "good_min_score"),
        ({"evaluation": "x", "group_by": "cost_usd"}, "group_by"),
        ({"evaluation": "x", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_quality_parameter_gets_422_naming_it(
    admin: httpx.Client, params: dict[str, str], named: str
) -> None:
    response = admin.get("/v1/quality", params=params)

    assert response.status_code == 422, response.text
    assert named in response.text
