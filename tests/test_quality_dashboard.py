"""The dashboard's quality panel, in headless Chromium against the seeded lake: one row
per judged model, its rate as the lake gives it, the planted bad model marked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics import quality_queries, queries
from analytics.lake_db import Lake
from analytics.reporting import BackgroundServer, create_app
from analytics.seed_evaluations import WORST_MODEL
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, Dashboard, names
from tests.test_reporting_api import ADMIN_KEY, keys_for, lake_range, seeded_lake

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="the dashboard test needs Chromium at /usr/bin/chromium"
)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    from playwright.sync_api import sync_playwright

    path = seeded_lake(tmp_path_factory)
    lake = Lake(path)
    start, end = lake_range(lake)
    tenant = lake.frame(queries.top_spenders(start, end, by="tenant", n=1))["tenant"][0]
    keys, tenant_key = keys_for(tmp_path_factory.mktemp("quality-keys"), tenant)
    with BackgroundServer(create_app(path, keys)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Dashboard(lake, server.url, browser, tenant, tenant_key)
        finally:
            browser.close()
    lake.close()


def test_the_quality_panel_shows_each_judged_model_and_marks_the_worst(
    dashboard: Dashboard, tmp_path: Path
) -> None:
    page, errors, outside = dashboard.open(ADMIN_KEY)
    page.screenshot(path=str(tmp_path / "quality.png"), full_page=True)

    assert page.evaluate("document.body.dataset.state") == "ready", page.inner_text("#status")
    assert (errors, outside) == ([], [])
    rates = dashboard.lake.frame(
        quality_queries.quality(
            dashboard.start,
            dashboard.end,
            evaluation="hallucination",
            label="hallucinated",
            group_by=["model"],
        )
    )
    judged = rates[rates.evaluated_calls > 0].sort_values(
        ["label_rate", "model"], ascending=[False, True]
    )
    assert names(page, "#quality tbody tr", "model") == list(judged.model)
    shown = [float(rate) for rate in names(page, "#quality tbody tr", "rate")]
    assert shown == pytest.approx(list(judged.label_rate))
    assert page.get_attribute("#quality tbody tr.worst", "data-model") == WORST_MODEL
    assert page.locator("#quality tbody tr").first.inner_text().startswith(WORST_MODEL)
