"""The ``tollgate`` command, run as a real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

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


def test_a_command_not_built_yet_says_so_instead_of_pretending() -> None:
    result = subprocess.run([*TOLLGATE, "up"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "not available in this build yet" in result.stderr
