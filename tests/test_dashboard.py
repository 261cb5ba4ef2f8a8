"""The dashboard, loaded in headless Chromium against a real lake, with no internet.

Every request the page makes outside 127.0.0.1 is blocked and remembered; the test fails
if there was one, or if the page logged an error, or if a chart does not show what the
lake holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

from analytics import queries
from analytics.lake_db import Lake
from analytics.reporting import BackgroundServer, create_app
from tests.test_reporting_api import ADMIN_KEY, keys_for, lake_range, seeded_lake

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="the dashboard test needs Chromium at /usr/bin/chromium"
)


class Dashboard:
    """The app served over the lake, and one Chromium to look at it."""

    def __init__(self, lake: Lake, url: str, browser: Any, tenant: str, tenant_key: str) -> None:
        self.lake = lake
        self.url = url
        self.browser = browser
        self.tenant = tenant
        self.tenant_key = tenant_key
        self.start, self.end = lake_range(lake)

    def open(
        self, key: str, prepare: Callable[[Any], None] | None = None
    ) -> tuple[Any, list[str], list[str]]:
        """A page showing the whole lake, its console errors and its outside requests;
        ``prepare`` may add routes to the page before it loads."""
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        outside: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))

        def loopback_only(route: Any) -> None:
            if urlparse(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", loopback_only)
        if prepare is not None:
            prepare(page)
        query = urlencode(
            {
                "start": self.start.isoformat(),
                "end": self.end.isoformat(),
                "tz": "UTC",
                "granularity": "day",
            }
        )
        page.goto(f"{self.url}/dashboard/?{query}#key={key}")
        page.wait_for_selector("body:not([data-state=loading])", timeout=30_000)
        return page, errors, outside


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    from playwright.sync_api import sync_playwright

    path = seeded_lake(tmp_path_factory)
    lake = Lake(path)
    start, end = lake_range(lake)
    tenant = lake.frame(queries.top_spenders(start, end, by="tenant", n=1))["tenant"][0]
    keys, tenant_key = keys_for(tmp_path_factory.mktemp("dashboard-keys"), tenant)
    with BackgroundServer(create_app(path, keys)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Dashboard(lake, server.url, browser, tenant, tenant_key)
        finally:
            browser.close()
    lake.close()


def names(page: Any, selector: str, attribute: str) -> list[str]:
    return page.locator(selector).evaluate_all(
        f"nodes => nodes.map(node => node.dataset.{attribute})"
    )


def test_the_dashboard_draws_the_lake_offline(dashboard: Dashboard, tmp_path: Path) -> None:
    page, errors, outside = dashboard.open(ADMIN_KEY)
    lake, start, end = dashboard.lake, dashboard.start, dashboard.end
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
    assert errors == []
    assert outside == []
    assert "key=" not in page.url, "the key must leave the address bar"

    buckets = lake.frame(queries.spend(start, end, granularity="day", tz="UTC"))
    assert len(buckets) >= 28
    assert page.locator("#spend-chart circle.point").count() == len(buckets)
    assert page.get_attribute("#spend-chart path.line", "data-points") == str(len(buckets))
    drawn = names(page, "#spend-chart circle.point", "bucket")
    assert [b[:10] for b in drawn] == [str(b)[:10] for b in buckets["bucket"]]

    for dimension in ("tenant", "api_key_id", "model"):
        top = lake.frame(queries.top_spenders(start, end, by=dimension, n=8))
        assert names(page, f"#top-{dimension} g.bar", "name") == list(top[dimension]), dimension

    budgets = lake.frame(queries.budget_status())
    assert len(budgets) > 0
    shown = names(page, "#budgets figure.gauge", "budgetId")
    assert len(shown) == min(len(budgets), 48)
    assert set(shown) <= set(budgets["budget_id"])
    assert page.locator("#budgets figure.gauge path.fill").count() == int(
        (budgets.sort_values("used_pct", ascending=False)["used_pct"].head(48) > 0).sum()
    )

    alerts = lake.frame(queries.recent_alerts(start, end))
    assert len(alerts) > 0
    assert names(page, "#alerts tbody tr", "alertId") == list(alerts["alert_id"][:50])
    assert page.locator("#kpi-spend").inner_text().startswith("$")
    assert page.is_hidden("#truncated"), "every answer fit in its pages"

    savings = lake.frame(queries.cache_savings(start, end))
    net = savings["net_savings_usd"].sum()
    assert net < savings["savings_usd"].sum()
    assert page.locator("#kpi-savings").inner_text() == f"${net:,.2f}"


def test_an_answer_longer_than_the_pages_read_says_it_was_cut(dashboard: Dashboard) -> None:
    """The API is made to promise one more page of the spend series, always: the page
    reads its 20 pages, draws them, and says the series is cut short."""
    asked: list[str] = []

    def endless_series(route: Any) -> None:
        asked.append(route.request.url)
        response = route.fetch()
        body = response.json()
        offset = int(parse_qs(urlparse(route.request.url).query)["offset"][0])
        route.fulfill(response=response, json={**body, "next_offset": offset + 10_000})

    page, errors, outside = dashboard.open(
        ADMIN_KEY, lambda page: page.route("**/v1/spend?*granularity=*", endless_series)
    )
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
    assert (errors, outside) == ([], [])
    assert len(asked) == 20
    assert page.is_visible("#truncated")
    days = len(
        dashboard.lake.frame(queries.spend(dashboard.start, dashboard.end, granularity="day"))
    )
    notice = page.inner_text("#truncated")
    assert notice == f"Spend over time: only the first {days} rows are shown"
    assert page.locator("#spend-chart circle.point").count() == days


def test_a_tenant_key_shows_only_its_tenant(dashboard: Dashboard) -> None:
    page, errors, outside = dashboard.open(dashboard.tenant_key)
    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
    assert (errors, outside) == ([], [])
    assert page.inner_text("#scope") == f"tenant {dashboard.tenant}"
    assert names(page, "#top-tenant g.bar", "name") == [dashboard.tenant]
    own = dashboard.lake.frame(queries.budget_status(tenant_scope=dashboard.tenant))
    assert set(names(page, "#budgets figure.gauge", "budgetId")) == set(own["budget_id"])


def test_a_wrong_key_asks_for_another(dashboard: Dashboard) -> None:
    page, _, outside = dashboard.open("not-a-reporting-key")
    page.wait_for_selector("#login:not([hidden])")
    assert page.inner_text("#login-error") == "That key was not accepted."
    assert page.is_hidden("#board")
    assert outside == []
