"""End to end: ``tollgate up`` as a real process tree, driven with the official SDKs.

One pipeline (broker, worker, sink, gateway, reporting API, each its own process) serves
the whole module, plus a second gateway process started beside it. The tests run in file
order; the last one stops ``up`` with SIGINT and checks that every call made during the
module is in the lake exactly once.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pyarrow.compute as pc
import pytest
import yaml
from anthropic import Anthropic

from tests.conftest import Providers
from tollgate.broker import free_port
from tollgate.lake import read_priced

pytestmark = pytest.mark.timeout(300)

ACME_KEY = "tg-e2e-acme-0123456789"
GLOBEX_KEY = "tg-e2e-globex-0123456789"
ADMIN_KEY = "tg-e2e-admin-0123456789"
ACME_TOKEN_LIMIT = 3000
PROMPT = "hello " * 40
"""Every chat call's prompt: the gateway reserves a call's estimate against the budget, so
a budget refuses a call as soon as what is left is below it. A call smaller than the one
refused may still fit, rightly; the same call may not."""
_READY = re.compile(r"✓ (?P<name>[\w-]+) ready in [\d.]+ s \(pid (?P<pid>\d+)\)")
_RESTARTED = re.compile(r"(?P<name>[\w-]+) restarted \(pid (?P<pid>\d+)\)")
_BROKER = re.compile(r"broker ready at (?P<address>\S+)")


@dataclass
class Pipeline:
    """A running ``tollgate up`` and what a test needs to reach it."""

    process: subprocess.Popen[str]
    env: dict[str, str]
    gateway_url: str
    reporting_url: str
    lake: Path
    lines: list[str] = field(default_factory=list)
    sent_ids: set[str] = field(default_factory=set)
    """x-tollgate-request-id of every call made through any gateway (= usage event ids)."""

    def wait_for_line(
        self, pattern: re.Pattern[str], timeout_s: float = 90, *, after: int = 0
    ) -> re.Match[str]:
        """The first output line from index ``after`` on that matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                match = pattern.search(line)
                if match:
                    return match
            if self.process.poll() is not None:
                raise AssertionError("tollgate up exited:\n" + "\n".join(self.lines))
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern.pattern}:\n" + "\n".join(self.lines))

    def pids(self) -> set[int]:
        """Every part process ``up`` reported starting."""
        return {
            int(match["pid"])
            for line in self.lines
            for pattern in (_READY, _RESTARTED)
            if (match := pattern.search(line))
        }

    def pid_of(self, name: str) -> int:
        pid = None
        for line in self.lines:
            for pattern in (_READY, _RESTARTED):
                match = pattern.search(line)
                if match and match["name"] == name:
                    pid = int(match["pid"])
        assert pid is not None, f"no pid for {name}"
        return pid

    def bootstrap(self) -> str:
        return self.wait_for_line(_BROKER)["address"]

    def report(self, path: str, **params: str) -> list[dict[str, object]]:
        response = httpx.get(
            f"{self.reporting_url}{path}",
            params=params,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()["rows"]


def _write_config(directory: Path, providers: Providers) -> dict[str, str]:
    routes = {
        "backends": [
            {"name": "openai", "kind": "openai", "base_url": providers.primary.base_url},
            {"name": "anthropic", "kind": "anthropic", "base_url": providers.claude.base_url},
        ],
        "models": {"gpt-4o-mini": ["openai"], "claude-sonnet-4": ["anthropic"]},
        "auth": {
            "api_keys": [
                {
                    "id": "acme-app",
                    "key_sha256": hashlib.sha256(ACME_KEY.encode()).hexdigest(),
                    "tenant": "acme",
                    "team": "search",
                },
                {
                    "id": "globex-app",
                    "key_sha256": hashlib.sha256(GLOBEX_KEY.encode()).hexdigest(),
                    "tenant": "globex",
                    "team": "research",
                },
            ]
        },
    }
    budgets = {
        "budgets": [
            {
                "id": "acme-tokens",
                "scope": {"tenant": "acme"},
                "window": {"rolling": 3600},
                "limit_tokens": ACME_TOKEN_LIMIT,
            }
        ]
    }
    (directory / "routes.yaml").write_text(yaml.safe_dump(routes))
    (directory / "budgets.yaml").write_text(yaml.safe_dump(budgets))
    return {
        "TOLLGATE_GATEWAY_ROUTES_FILE": str(directory / "routes.yaml"),
        "TOLLGATE_GATEWAY_PORT": str(free_port()),
        "TOLLGATE_GATEWAY_SPOOL_DIR": str(directory / "spool"),
        "TOLLGATE_STREAM_BUDGETS_FILE": str(directory / "budgets.yaml"),
        "TOLLGATE_STREAM_DATA_DIR": str(directory / "stream"),
        "TOLLGATE_STREAM_WEB_PORT": str(free_port()),
        "TOLLGATE_LAKE_PATH": str(directory / "lake"),
        "TOLLGATE_REPORTING_PORT": str(free_port()),
        "TOLLGATE_REPORTING_ADMIN_KEY": ADMIN_KEY,
        "TOLLGATE_LOG_LEVEL": "info",
    }


@contextmanager
def running_up(directory: Path, providers: Providers) -> Iterator[Pipeline]:
    """``tollgate up`` started in ``directory`` in front of ``providers``, until the block
    ends (then SIGINT)."""
    settings_env = _write_config(directory, providers)
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


@pytest.fixture(scope="module")
def pipeline(
    tmp_path_factory: pytest.TempPathFactory, fake_providers: Providers
) -> Iterator[Pipeline]:
    with running_up(tmp_path_factory.mktemp("e2e"), fake_providers) as running:
        yield running


def _openai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def _chat(pipeline: Pipeline, key: str, url: str | None = None) -> tuple[int, int]:
    """One chat call; returns (HTTP status, total tokens) and records its event id."""
    client = _openai(url or pipeline.gateway_url, key)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=50
        )
    except openai.APIStatusError as error:
        request_id = error.response.headers.get("x-tollgate-request-id")
        if request_id is not None:  # none: a stopping gateway did not take the call (503)
            pipeline.sent_ids.add(request_id)
        return error.status_code, 0
    pipeline.sent_ids.add(raw.headers["x-tollgate-request-id"])
    completion = raw.parse()
    assert completion.usage is not None
    return 200, completion.usage.total_tokens


def _wait(condition: Callable[[], object], timeout_s: float = 60, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _lake_ids(lake: Path) -> list[str]:
    ids: list[str] = []
    for batch in read_priced(lake, columns=["event_id"]):
        ids += pc.cast(batch.column(0), "string").to_pylist()
    return ids


def test_a_calls_usage_appears_in_the_reporting_api(pipeline: Pipeline) -> None:
    status, tokens = _chat(pipeline, GLOBEX_KEY)
    assert status == 200
    anthropic = Anthropic(base_url=pipeline.gateway_url, api_key=GLOBEX_KEY, max_retries=0)
    raw = anthropic.messages.with_raw_response.create(
        model="claude-sonnet-4", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    pipeline.sent_ids.add(raw.headers["x-tollgate-request-id"])
    message = raw.parse()
    tokens += message.usage.input_tokens + message.usage.output_tokens

    def reported() -> list[dict[str, object]]:
        return pipeline.report("/v1/spend", group_by="tenant", tenant="globex")

    _wait(lambda: reported() and reported()[0]["requests"] == 2, what="globex's calls")
    row = reported()[0]
    assert row["tenant"] == "globex"
    assert row["total_tokens"] == tokens
    assert float(row["cost_usd"]) > 0  # type: ignore[arg-type]


def test_a_budget_in_config_is_enforced_by_two_gateway_instances(pipeline: Pipeline) -> None:
    second_port = free_port()
    second = subprocess.Popen(
        [sys.executable, "-m", "tollgate.cli", "gateway", "--port", str(second_port)],
        env={
            **pipeline.env,
            "KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap(),
            # What `up` tells its own parts about the embedded broker.
            "TOLLGATE_KAFKA_IDEMPOTENCE": "false",
            "TOLLGATE_KAFKA_SESSION_TIMEOUT_S": "3",
            "TOLLGATE_GATEWAY_SPOOL_DIR": str(pipeline.lake.parent / "spool-2"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second_url = f"http://127.0.0.1:{second_port}"
    try:
        _wait(lambda: _healthy(second_url), 30, "the second gateway")
        spent = 0
        while spent < ACME_TOKEN_LIMIT:  # spend acme's budget through the first gateway only
            status, tokens = _chat(pipeline, ACME_KEY)
            if status == 429:
                break
            spent += tokens
        # The stream's state reaches the second gateway, which never saw these calls.
        _wait(lambda: _chat(pipeline, ACME_KEY, second_url)[0] == 429, 30, "a 429 from gw 2")
        # The same call again: refused, the budget named.
        client = _openai(second_url, ACME_KEY)
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], max_tokens=50
            )
        pipeline.sent_ids.add(refused.value.response.headers["x-tollgate-request-id"])
        assert "acme-tokens" in str(refused.value)
        assert int(refused.value.response.headers["retry-after"]) > 0
        # Globex has no budget: both gateways still serve it.
        assert _chat(pipeline, GLOBEX_KEY, second_url)[0] == 200
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(40)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_killing_the_worker_and_the_sink_mid_traffic_loses_nothing(pipeline: Pipeline) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:
        try:
            while not stop.is_set():
                assert _chat(pipeline, GLOBEX_KEY)[0] == 200
                time.sleep(0.02)
        except BaseException as error:  # surfaced below
            errors.append(error)

    caller = threading.Thread(target=traffic)
    caller.start()
    try:
        time.sleep(2)
        worker, sink = pipeline.pid_of("worker-1"), pipeline.pid_of("sink")
        killed_at = len(pipeline.lines)
        os.kill(worker, signal.SIGKILL)
        os.kill(sink, signal.SIGKILL)
        pipeline.wait_for_line(re.compile(r"worker-1 restarted"), 30, after=killed_at)
        pipeline.wait_for_line(re.compile(r"sink restarted"), 30, after=killed_at)
        time.sleep(3)
    finally:
        stop.set()
        caller.join(30)
    assert not errors
    assert any("worker-1 exited with signal SIGKILL" in line for line in pipeline.lines)
    sent = set(pipeline.sent_ids)
    _wait(lambda: sent <= set(_lake_ids(pipeline.lake)), 90, "every call in the lake")
    ids = _lake_ids(pipeline.lake)
    assert len(ids) == len(set(ids)), "a call is in the lake twice"


def test_stopping_up_with_sigint_flushes_everything(pipeline: Pipeline) -> None:
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                _chat(pipeline, GLOBEX_KEY)
            except openai.APIConnectionError:
                return  # the gateway stopped taking calls

    caller = threading.Thread(target=traffic)
    caller.start()
    time.sleep(1.5)
    pipeline.process.send_signal(signal.SIGINT)
    assert pipeline.process.wait(120) == 0, "\n".join(pipeline.lines)
    stop.set()
    caller.join(30)
    assert any("tollgate-stream caught up" in line for line in pipeline.lines), pipeline.lines
    assert any("tollgate-sink caught up" in line for line in pipeline.lines), pipeline.lines
    for pid in pipeline.pids():  # no part outlives `up`
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    ids = _lake_ids(pipeline.lake)
    assert len(ids) == len(set(ids)), "a call is in the lake twice"
    assert set(pipeline.sent_ids) <= set(ids), "a call is missing from the lake"
