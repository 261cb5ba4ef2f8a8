"""The README's run commands as written: the parts one per process, and `tollgate up`.

The block is read from README.md itself. Each line runs under ``bash -c`` in one working
directory, whose ``deploy/routes.yaml`` and ``budgets.yaml`` are the test's own (in front of
a fake provider). The other processes get only what ``tollgate broker`` printed: its
``export`` line replaces the README's, as the README says to do. Each ``…`` the README leaves
to the reader is filled in, and ports are moved off their defaults through the environment
(tests never bind fixed ports). Every part must then exit within 10 s of SIGTERM.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pyarrow.compute as pc
import pytest
import yaml

from tests.conftest import Providers
from tollgate.broker import free_port
from tollgate.lake import read_priced

pytestmark = pytest.mark.timeout(240)

README = Path(__file__).resolve().parent.parent / "README.md"
KEY = "tg-standalone-0123456789"
ADMIN_KEY = "tg-standalone-admin-0123"
FILLED_IN = {"OPENAI_API_KEY": "sk-upstream", "TOLLGATE_REPORTING_ADMIN_KEY": ADMIN_KEY}
"""What the test writes where the README has ``…``."""


def standalone_block() -> list[str]:
    """The README's fenced block that starts with ``tollgate broker``, line by line."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if b.startswith("tollgate broker\n")]
    return [line for line in block.splitlines() if line.strip()]


def fill_in(line: str) -> str:
    for name, value in FILLED_IN.items():
        line = line.replace(f"{name}=…", f"{name}={value}")
    assert "…" not in line, line
    return line


def write_config(directory: Path, providers: Providers) -> None:
    (directory / "deploy").mkdir()
    routes = {
        "backends": [
            {
                "name": "openai",
                "kind": "openai",
                "base_url": providers.primary.base_url,
                "api_key_env": "OPENAI_API_KEY",
            }
        ],
        "models": {"gpt-*": ["openai"]},
        "auth": {
            "api_keys": [
                {
                    "id": "acme-app",
                    "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                    "tenant": "acme",
                    "team": "search",
                }
            ]
        },
    }
    (directory / "deploy" / "routes.yaml").write_text(yaml.safe_dump(routes))
    budgets = {
        "budgets": [
            {"id": "acme-day", "scope": {"tenant": "acme"}, "window": {"rolling": 86400}}
            | {"limit_tokens": 10_000_000}
        ]
    }
    (directory / "budgets.yaml").write_text(yaml.safe_dump(budgets))


def base_env(ports: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOLLGATE_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **ports}


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_readme_standalone_commands_meter_calls_into_the_lake(
    tmp_path: Path, fake_providers: Providers, parts: list[subprocess.Popen[str]]
) -> None:
    write_config(tmp_path, fake_providers)
    gateway_port, reporting_port = free_port(), free_port()
    env = base_env(
        {
            "TOLLGATE_GATEWAY_PORT": str(gateway_port),
            "TOLLGATE_STREAM_WEB_PORT": str(free_port()),
            "TOLLGATE_REPORTING_PORT": str(reporting_port),
        }
    )
    broker_line, export_line, *commands = standalone_block()
    assert broker_line == "tollgate broker"
    assert export_line.startswith("export KAFKA_BOOTSTRAP_SERVERS=")

    def start(line: str, extra_env: dict[str, str], name: str) -> subprocess.Popen[str]:
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - the process keeps it
        process = subprocess.Popen(
            ["bash", "-c", line],  # bash execs a simple command: the pid is the part
            cwd=tmp_path,
            env={**env, **extra_env},
            stdout=subprocess.PIPE if name == "broker" else log,
            stderr=log,
            text=True,
        )
        parts.append(process)
        return process

    broker = start(broker_line, {}, "broker")
    assert broker.stdout is not None
    printed = ""
    deadline = time.monotonic() + 30
    while not printed.strip().startswith("export ") and time.monotonic() < deadline:
        printed = broker.stdout.readline()
    assert printed.strip().startswith("export "), printed
    exported = dict(item.split("=", 1) for item in shlex.split(printed.strip())[1:])
    assert set(exported) >= {
        "KAFKA_BOOTSTRAP_SERVERS",
        "TOLLGATE_KAFKA_IDEMPOTENCE",
        "TOLLGATE_KAFKA_SESSION_TIMEOUT_S",
    }
    assert set(exported) == {item.split("=")[0] for item in export_line.split()[1:]}

    names = [shlex.split(line)[-1] for line in commands]
    running = {
        name: start(fill_in(line), exported, name)
        for name, line in zip(names, commands, strict=True)
    }
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    _wait(lambda: _ready(f"{gateway_url}/readyz"), 60, "the gateway ready", tmp_path)

    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=KEY, max_retries=0)
    ids = set()
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        ids.add(raw.headers["x-tollgate-request-id"])
    lake = tmp_path / "var" / "lake"
    _wait(lambda: ids <= _lake_ids(lake), 90, "the calls in the lake", tmp_path)
    spend = httpx.get(
        f"http://127.0.0.1:{reporting_port}/v1/spend",
        params={"group_by": "tenant"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert spend.status_code == 200
    assert [row["tenant"] for row in spend.json()["rows"]] == ["acme"]

    for name in ("gateway", "report", "sink", "worker"):
        process = running[name]
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        process.wait(30)
        assert time.monotonic() - stopped_at < 10, f"{name} took over 10 s to stop"
    broker.send_signal(signal.SIGINT)
    assert broker.wait(15) == 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _lake_ids(lake: Path) -> set[str]:
    if not lake.exists():
        return set()
    ids: set[str] = set()
    for batch in read_priced(lake, columns=["event_id"]):
        ids |= set(pc.cast(batch.column(0), "string").to_pylist())
    return ids


def _wait(condition: object, timeout_s: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tails = {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")}
            raise AssertionError(f"timed out waiting for {what}: {tails}")
        time.sleep(0.25)


def up_block() -> str:
    """The README's fenced block that ends with ``tollgate up``, as one script."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if re.search(r"^tollgate up\b", b, re.MULTILINE)]
    return block


def test_the_readme_up_commands_run_the_pipeline_into_the_lake(
    tmp_path: Path, fake_providers: Providers, parts: list[subprocess.Popen[str]]
) -> None:
    write_config(tmp_path, fake_providers)
    gateway_port, reporting_port = free_port(), free_port()
    env = base_env(
        {
            "TOLLGATE_GATEWAY_PORT": str(gateway_port),
            "TOLLGATE_STREAM_WEB_PORT": str(free_port()),
            "TOLLGATE_REPORTING_PORT": str(reporting_port),
        }
    )
    script = up_block().replace("OPENAI_API_KEY=…", "OPENAI_API_KEY=sk-upstream")
    script = script.replace("ANTHROPIC_API_KEY=…", "ANTHROPIC_API_KEY=sk-upstream-2")
    assert "…" not in script, script
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - the process keeps it
    up = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal of its own: Ctrl-C reaches the whole group
    )
    parts.append(up)
    _wait(lambda: "Tollgate is up" in (tmp_path / "up.log").read_text(), 120, "up", tmp_path)

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key=KEY)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    request_id = raw.headers["x-tollgate-request-id"]
    _wait(lambda: request_id in _lake_ids(tmp_path / "var" / "lake"), 90, "the lake", tmp_path)

    os.killpg(up.pid, signal.SIGINT)  # Ctrl-C
    assert up.wait(120) == 0, (tmp_path / "up.log").read_text()[-3000:]
