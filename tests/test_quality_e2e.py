"""Quality end to end, on ``tollgate up`` as a real process tree: an SDK call, its
evaluation posted with the returned request id, into the lake and the reporting API; the
demo's judge making one model worse until the stream raises a quality alert."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq
import pytest

from analytics import Lake
from tests.conftest import Providers
from tests.test_e2e import ACME_KEY, GLOBEX_KEY, Pipeline, _write_config
from tollgate.demo.setup import DemoKey
from tollgate.demo.traffic import Caller, call_once, judge

pytestmark = pytest.mark.timeout(300)

QUALITY_ENV = {
    "TOLLGATE_STREAM_QUALITY_BUCKET_S": "4",
    "TOLLGATE_STREAM_QUALITY_WARMUP_BUCKETS": "2",
    "TOLLGATE_STREAM_QUALITY_MIN_EVALUATIONS": "6",
    "TOLLGATE_STREAM_QUALITY_MIN_RISE": "0.3",
}


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, fake_providers: Providers
) -> Iterator[Pipeline]:
    directory = tmp_path_factory.mktemp("quality-e2e")
    settings_env = {**_write_config(directory, fake_providers), **QUALITY_ENV}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TOLLGATE_") and key != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env.update(settings_env)
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.cli", "up", "--log-dir", str(directory / "logs")],
        env=env,
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Pipeline(
        process,
        env,
        f"http://127.0.0.1:{settings_env['TOLLGATE_GATEWAY_PORT']}",
        f"http://127.0.0.1:{settings_env['TOLLGATE_REPORTING_PORT']}",
        directory / "lake",
    )

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.lines.append(line.rstrip("\n"))

    threading.Thread(target=read_output, daemon=True).start()
    try:
        running.wait_for_line(re.compile("Tollgate is up"))
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait(condition: Callable[[], object], timeout_s: float = 60, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _evaluate(pipeline: Pipeline, key: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{pipeline.gateway_url}/v1/evaluations",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _lake_evaluations(lake: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for path in sorted((lake / "evaluations").glob("date=*/*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_an_sdk_calls_evaluation_reaches_the_lake_and_the_reporting_api(
    pipeline: Pipeline,
) -> None:
    client = openai.OpenAI(base_url=f"{pipeline.gateway_url}/v1", api_key=ACME_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Who wrote Hamlet?"}],
        max_tokens=64,  # Acme's 3,000-token budget holds a call's cap: keep it small
    )
    request_id = raw.headers["x-tollgate-request-id"]

    first = _evaluate(
        pipeline,
        ACME_KEY,
        {
            "request_id": request_id,
            "name": "hallucination",
            "score_label": "hallucinated",
            "score_value": 1,
            "explanation": "names the wrong author",
            "evaluator": "judge-v1",
        },
    )
    second = _evaluate(
        pipeline, ACME_KEY, {"request_id": request_id, "name": "groundedness", "score_value": 0.25}
    )
    assert (first.status_code, second.status_code) == (201, 201), first.text

    def reported() -> list[dict[str, object]]:
        return pipeline.report(
            "/v1/quality",
            evaluation="hallucination",
            label="hallucinated",
            group_by="tenant",
            tenant="acme",
        )

    _wait(lambda: reported() and reported()[0]["evaluated_calls"] == 1, what="the evaluation")
    (row,) = reported()
    assert (row["calls"], row["labelled_calls"], row["label_rate"]) == (1, 1, 1.0)
    assert row["good_calls"] == 0
    mine = [r for r in _lake_evaluations(pipeline.lake) if r["event_id"] == request_id]
    assert sorted((r["name"], r["score_value"]) for r in mine) == [
        ("groundedness", 0.25),
        ("hallucination", 1.0),
    ]
    assert {r["tenant"] for r in mine} == {"acme"}
    with Lake(pipeline.lake) as lake:
        joined = lake.sql(
            "SELECT evaluation_name, explanation, model, backend, cost_usd FROM evaluated_usage "
            "WHERE event_id = ? ORDER BY evaluation_name",
            (request_id,),
        )
    assert list(joined.evaluation_name) == ["groundedness", "hallucination"]
    assert list(joined.model) == ["gpt-4o-mini"] * 2
    assert list(joined.backend) == ["openai"] * 2
    assert (joined.cost_usd > 0).all()


def test_another_tenants_request_id_is_refused(pipeline: Pipeline) -> None:
    client = openai.OpenAI(base_url=f"{pipeline.gateway_url}/v1", api_key=ACME_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=64
    )

    refused = _evaluate(
        pipeline,
        GLOBEX_KEY,
        {"request_id": raw.headers["x-tollgate-request-id"], "name": "x", "score_value": 1},
    )

    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "request_not_found"


def test_the_demo_judge_shows_the_worse_model_and_a_backend_turning_bad_is_alerted(
    pipeline: Pipeline,
) -> None:
    """The demo's own callers and judge (tollgate.demo.traffic), on Globex's key: GPT stays
    good, Claude is worse from the start and turns bad after three buckets."""
    key = DemoKey("globex-app", GLOBEX_KEY, "globex", "research")
    gpt, claude = Caller(key, 1, "gpt-4o-mini", 50, 16), Caller(key, 1, "claude-sonnet-4", 50, 16)
    rng = random.Random(11)
    bucket_s = int(QUALITY_ENV["TOLLGATE_STREAM_QUALITY_BUCKET_S"])

    async def traffic() -> None:
        async with httpx.AsyncClient(base_url=pipeline.gateway_url, timeout=30) as client:

            async def one(caller: Caller, rate: float) -> None:
                status, request_id = await call_once(client, caller, rng)
                assert status == 200
                assert request_id is not None
                assert await judge(client, caller, request_id, rate, rng) == 2

            began = time.monotonic()
            while time.monotonic() - began < 6 * bucket_s:
                turned = time.monotonic() - began >= 3 * bucket_s
                await asyncio.gather(
                    *(one(gpt, 0.0) for _ in range(3)),
                    *(one(claude, 0.95 if turned else 0.15) for _ in range(3)),
                )
                await asyncio.sleep(0.2)

    asyncio.run(traffic())

    def quality_alerts() -> list[dict[str, object]]:
        return pipeline.report("/v1/alerts", kind="quality_regression")

    _wait(
        lambda: any("backend=anthropic" in str(a["subject"]) for a in quality_alerts()),
        what="a quality alert for the anthropic backend",
    )
    subjects = {str(a["subject"]) for a in quality_alerts()}
    assert "tenant=globex,backend=anthropic" in subjects
    assert not any("openai" in s or "gpt" in s for s in subjects)
    rates = {
        row["model"]: row["label_rate"]
        for row in pipeline.report(
            "/v1/quality",
            evaluation="hallucination",
            label="hallucinated",
            group_by="model",
            tenant="globex",
        )
    }
    assert rates["gpt-4o-mini"] == 0.0
    assert rates["claude-sonnet-4"] > 0.3


def _readme_block(containing: str) -> str:
    """The README's bash block that contains ``containing``, exactly as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_readmes_evaluation_and_quality_commands_work_as_written(pipeline: Pipeline) -> None:
    client = openai.OpenAI(base_url=f"{pipeline.gateway_url}/v1", api_key=GLOBEX_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    env = {
        **os.environ,
        "GATEWAY": pipeline.gateway_url,
        "KEY": GLOBEX_KEY,
        "REQUEST_ID": raw.headers["x-tollgate-request-id"],
        "REPORTING": pipeline.reporting_url,
        "REPORTING_KEY": str(pipeline.env["TOLLGATE_REPORTING_ADMIN_KEY"]),
    }

    posted = subprocess.run(
        ["bash", "-c", _readme_block("/v1/evaluations")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(posted.stdout)["request_id"] == env["REQUEST_ID"]

    def quality() -> list[dict[str, object]]:
        out = subprocess.run(
            ["bash", "-c", _readme_block("/v1/quality?")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(out.stdout)["rows"]

    _wait(lambda: any(row["evaluated_calls"] for row in quality()), what="the quality rows")
    assert {"model", "label_rate", "coverage", "cost_per_good_answer"} <= set(quality()[0])
