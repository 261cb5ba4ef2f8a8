"""The ``tollgate`` command, run as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from tollgate.broker import free_port
from tollgate.topics import ALL_TOPICS

TOLLGATE = [sys.executable, "-m", "tollgate.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TOLLGATE_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    return {**env, **extra}


def test_help_lists_every_command() -> None:
    result = subprocess.run([*TOLLGATE, "--help"], capture_output=True, text=True, check=True)
    for command in ("broker", "up", "demo", "report"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def test_broker_serves_every_topic_until_interrupted(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*TOLLGATE, "broker", "--log", str(tmp_path / "tansu.log")],
        stdout=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert process.stdout is not None
    first_line = process.stdout.readline()
    bootstrap = re.search(r"broker ready at (\S+)", first_line)
    assert bootstrap, first_line

    async def list_topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.group(1))
        await admin.start()
        try:
            return await admin.list_topics()
        finally:
            await admin.close()

    assert {spec.base_name for spec in ALL_TOPICS} <= set(asyncio.run(list_topics()))

    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0
    assert "broker stopped." in process.stdout.read()


def test_broker_reuses_a_configured_cluster_instead_of_starting_one(broker: str) -> None:
    prefix = f"reuse{int(time.time() * 1000)}."
    result = subprocess.run(
        [*TOLLGATE, "broker"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(KAFKA_BOOTSTRAP_SERVERS=broker, TOLLGATE_KAFKA_TOPIC_PREFIX=prefix),
    )
    assert result.returncode == 0, result.stderr
    assert f"broker ready at {broker}" in result.stdout


def test_a_bad_setting_stops_the_command_with_a_message_and_exit_code_2() -> None:
    result = subprocess.run(
        [*TOLLGATE, "broker"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(TOLLGATE_KAFKA_PARTITIONS="many"),
    )
    assert result.returncode == 2
    assert "TOLLGATE_KAFKA_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_without_a_routes_file_says_which_setting_is_missing(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TOLLGATE, "up", "--log-dir", str(tmp_path / "logs")],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode == 2
    assert "TOLLGATE_GATEWAY_ROUTES_FILE" in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before anything started


def test_up_with_a_taken_port_names_the_port_and_its_setting(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("backends: []\nmodels: {}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*TOLLGATE, "up", "--log-dir", str(tmp_path / "logs")],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(
                TOLLGATE_GATEWAY_ROUTES_FILE=str(routes),
                TOLLGATE_GATEWAY_PORT=str(free_port()),
                TOLLGATE_STREAM_WEB_PORT=str(free_port()),
                TOLLGATE_REPORTING_PORT=str(port),
            ),
        )
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "TOLLGATE_REPORTING_PORT" in result.stderr


def test_gateway_without_a_routes_file_says_which_setting_is_missing(broker: str) -> None:
    result = subprocess.run(
        [*TOLLGATE, "gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(KAFKA_BOOTSTRAP_SERVERS=broker),
    )
    assert result.returncode == 2
    assert "TOLLGATE_GATEWAY_ROUTES_FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_refuses_to_start_without_the_backend_credentials_it_names(
    broker: str, repo_root: Path
) -> None:
    result = subprocess.run(
        [*TOLLGATE, "gateway"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(
            KAFKA_BOOTSTRAP_SERVERS=broker,
            TOLLGATE_GATEWAY_ROUTES_FILE=str(repo_root / "deploy" / "routes.yaml"),
        ),
    )
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr
    assert "ANTHROPIC_API_KEY" in result.stderr


def test_gateway_serves_until_terminated_then_flushes_its_events(
    broker: str, kafka_settings, topics, tmp_path: Path
) -> None:
    import httpx
    import yaml

    from gateway.auth import hash_api_key
    from tests.own_broker import consume
    from tollgate.broker import free_port
    from tollgate.fake_provider import FakeProvider

    with FakeProvider() as provider:
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            yaml.safe_dump(
                {
                    "backends": [
                        {
                            "name": "fake",
                            "kind": "openai",
                            "base_url": provider.base_url,
                            "api_key_env": "FAKE_PROVIDER_KEY",
                        }
                    ],
                    "models": {"gpt-*": ["fake"]},
                    "auth": {
                        "api_keys": [
                            {"id": "cli", "tenant": "acme", "key_sha256": hash_api_key("sk-cli")}
                        ]
                    },
                }
            )
        )
        port = free_port()
        process = subprocess.Popen(
            [*TOLLGATE, "gateway", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(
                KAFKA_BOOTSTRAP_SERVERS=broker,
                TOLLGATE_KAFKA_TOPIC_PREFIX=kafka_settings.topic_prefix,
                TOLLGATE_KAFKA_IDEMPOTENCE="false",
                TOLLGATE_GATEWAY_ROUTES_FILE=str(routes),
                TOLLGATE_GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
                FAKE_PROVIDER_KEY="sk-upstream-secret",
            ),
        )
        try:
            assert process.stdout is not None
            assert f":{port}" in process.stdout.readline()
            url = f"http://127.0.0.1:{port}"
            ids = []
            for _ in range(5):
                response = httpx.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": "Bearer sk-cli"},
                )
                assert response.status_code == 200
                ids.append(response.headers["x-tollgate-request-id"])
            assert provider.stats()["last_request"]["authorization"] == "Bearer sk-upstream-secret"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0

    received = asyncio.run(consume(kafka_settings, broker, topics.usage, 5))
    assert sorted(str(e.event_id) for e in received) == sorted(ids)


def test_a_stopping_gateway_answers_new_calls_503_and_exits_within_10_s(
    broker: str, kafka_settings, tmp_path: Path
) -> None:
    import threading

    import httpx
    import yaml

    from gateway.auth import hash_api_key
    from tollgate.fake_provider import FakeProvider

    with FakeProvider() as provider:
        provider.configure(latency_ms=2000)
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            yaml.safe_dump(
                {
                    "backends": [{"name": "fake", "kind": "openai", "base_url": provider.base_url}],
                    "models": {"gpt-*": ["fake"]},
                    "auth": {
                        "api_keys": [
                            {"id": "cli", "tenant": "acme", "key_sha256": hash_api_key("sk-cli")}
                        ]
                    },
                }
            )
        )
        port = free_port()
        process = subprocess.Popen(
            [*TOLLGATE, "gateway", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(
                KAFKA_BOOTSTRAP_SERVERS=broker,
                TOLLGATE_KAFKA_TOPIC_PREFIX=kafka_settings.topic_prefix,
                TOLLGATE_KAFKA_IDEMPOTENCE="false",
                TOLLGATE_GATEWAY_ROUTES_FILE=str(routes),
                TOLLGATE_GATEWAY_SPOOL_DIR=str(tmp_path / "spool"),
            ),
        )
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        call = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"authorization": "Bearer sk-cli"}
        try:
            assert process.stdout is not None
            assert f":{port}" in process.stdout.readline()
            with httpx.Client(timeout=30) as client:  # one keep-alive connection
                assert client.post(url, json=call, headers=auth).status_code == 200
                in_flight: list[int] = []
                slow = threading.Thread(
                    target=lambda: in_flight.append(
                        httpx.post(url, json=call, headers=auth, timeout=30).status_code
                    )
                )
                slow.start()
                time.sleep(0.5)
                process.send_signal(signal.SIGTERM)
                stopped_at = time.monotonic()
                time.sleep(0.3)
                late = client.post(url, json=call, headers=auth)
                assert time.monotonic() - stopped_at < 2  # not held
                assert late.status_code == 503
                assert int(late.headers["retry-after"]) > 0
                assert late.json()["error"]["code"] == "shutting_down"
                slow.join(30)
            assert in_flight == [200]  # the call in flight was finished
            assert process.wait(15) == 0
            assert time.monotonic() - stopped_at < 10
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
