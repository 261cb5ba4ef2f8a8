"""The supervisor behind ``tollgate up``: real child processes, started, restarted, stopped."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tollgate.settings import load_settings
from tollgate.supervisor import Part, PartFailed, StartInterrupted, Supervisor, child_env
from tollgate.up import (
    Listener,
    PortTaken,
    UpOptions,
    check_ports,
    listeners,
    plan,
    worker_ports,
)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _flag_file_ready(path: Path) -> Part:
    """A part that writes ``path`` once up, then runs until stopped."""
    code = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        f"pathlib.Path({str(path)!r}).write_text('up')\n"
        "while True: time.sleep(0.05)\n"
    )
    return Part("sleeper", _python(code), child_env({}), path.exists)


def test_a_part_counts_as_started_only_once_its_probe_answers(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(tmp_path / "logs", said.append)
    flag = tmp_path / "up.flag"
    supervisor.start(_flag_file_ready(flag))
    try:
        assert flag.exists()
        assert supervisor.running("sleeper")
    finally:
        assert supervisor.stop("sleeper") == 0
    assert not supervisor.running("sleeper")


def test_a_part_that_dies_while_starting_fails_with_its_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", print)
    part = Part(
        "broken",
        _python("import sys; print('cannot read routes.yaml', file=sys.stderr); sys.exit(3)"),
        child_env({}),
        lambda: False,
    )
    with pytest.raises(PartFailed) as failure:
        supervisor.start(part)
    assert "broken exited with code 3 while starting" in str(failure.value)
    assert "cannot read routes.yaml" in str(failure.value)


def test_a_part_that_never_gets_ready_fails_after_its_timeout(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", print)
    part = Part(
        "slow",
        _python("import time; time.sleep(30)"),
        child_env({}),
        lambda: False,
        start_timeout_s=0.5,
    )
    try:
        with pytest.raises(PartFailed, match="slow was not ready after"):
            supervisor.start(part)
    finally:
        supervisor.stop_all()


def test_a_crashed_part_is_reported_and_restarted(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(tmp_path / "logs", said.append)
    runs = tmp_path / "runs"
    code = (
        "import pathlib, time\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "count = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(count))\n"
        "time.sleep(0.3)\n"
        "if count == 1:\n"
        "    raise SystemExit(7)\n"
        "time.sleep(60)\n"
    )
    supervisor.start(Part("flaky", _python(code), child_env({}), runs.exists))
    try:
        deadline = time.monotonic() + 10
        while not (runs.exists() and runs.read_text() == "2"):
            assert time.monotonic() < deadline, f"not restarted: {said}"
            supervisor.check()
            time.sleep(0.05)
        assert any("flaky exited with code 7; restarting in 1 s" in line for line in said)
        assert any("flaky restarted" in line for line in said)
    finally:
        supervisor.stop_all()


def test_a_part_ignoring_sigterm_is_killed_after_its_timeout(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = Supervisor(tmp_path / "logs", said.append)
    flag = tmp_path / "flag"
    code = (
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(flag)!r}).write_text('up')\n"
        "time.sleep(60)\n"
    )
    supervisor.start(
        Part("stubborn", _python(code), child_env({}), flag.exists, stop_timeout_s=0.5)
    )
    assert supervisor.stop("stubborn") == -9
    assert any("stubborn did not stop" in line for line in said)


def test_a_taken_port_is_named_with_its_part_and_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortTaken) as error:
            check_ports([Listener("gateway", "127.0.0.1", port, "TOLLGATE_GATEWAY_PORT")])
    message = str(error.value)
    assert f"port {port}" in message
    assert "gateway" in message
    assert "TOLLGATE_GATEWAY_PORT" in message


def test_up_checks_every_port_it_will_listen_on() -> None:
    settings = load_settings(
        {
            "TOLLGATE_GATEWAY_PORT": "18080",
            "TOLLGATE_REPORTING_PORT": "18090",
            "TOLLGATE_STREAM_WEB_PORT": "16066",
            "TOLLGATE_LAKE_SINK_METRICS_PORT": "19466",
        }
    )
    ports = worker_ports(settings, 2)
    assert ports == [16066, 16067]
    assert {(item.part, item.port) for item in listeners(settings, ports)} == {
        ("gateway", 18080),
        ("reporting", 18090),
        ("worker-1", 16066),
        ("worker-2", 16067),
        ("sink", 19466),
    }


def test_workers_get_free_ports_of_their_own_when_the_setting_is_0() -> None:
    ports = worker_ports(load_settings({"TOLLGATE_STREAM_WEB_PORT": "0"}), 3)
    assert 0 not in ports
    assert len(set(ports)) == 3


def test_one_port_set_for_two_parts_is_refused() -> None:
    settings = load_settings(
        {"TOLLGATE_GATEWAY_PORT": "16067", "TOLLGATE_STREAM_WEB_PORT": "16066"}
    )
    with pytest.raises(PortTaken, match="16067 is set for both gateway"):
        check_ports(listeners(settings, worker_ports(settings, 2)))


def test_each_worker_gets_its_own_port_and_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"TOLLGATE_STREAM_DATA_DIR": str(tmp_path / "stream")})
    parts = plan(settings, "127.0.0.1:9092", UpOptions(workers=2), [17001, 17002])
    workers = [part for part in parts if part.role == "worker"]
    assert [part.env["TOLLGATE_STREAM_WEB_PORT"] for part in workers] == ["17001", "17002"]
    assert [part.env["TOLLGATE_STREAM_DATA_DIR"] for part in workers] == [
        str(tmp_path / "stream" / "w1"),
        str(tmp_path / "stream" / "w2"),
    ]
    assert {part.name: part.role for part in parts if part.role != "worker"} == {
        "sink": "sink",
        "compactor": "extra",
        "gateway": "gateway",
        "reporting": "reporting",
    }
    # The embedded broker refuses idempotent producers: every part is told so.
    assert all(part.env["TOLLGATE_KAFKA_IDEMPOTENCE"] == "false" for part in parts)


def test_a_part_that_dies_right_after_its_probe_answers_is_not_started(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", print)
    part = Part(
        "brief",
        _python("import time; time.sleep(0.3); raise SystemExit(4)"),
        child_env({}),
        lambda: True,
        settle_s=2.0,
    )
    with pytest.raises(PartFailed, match="brief exited with code 4 while starting"):
        supervisor.start(part)


def test_a_stop_while_a_part_starts_interrupts_the_wait(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs", print)
    stop = threading.Event()
    part = Part("slow", _python("import time; time.sleep(30)"), child_env({}), lambda: False)
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    try:
        with pytest.raises(StartInterrupted):
            supervisor.start(part, stop)
        assert time.monotonic() - began < 5
    finally:
        supervisor.stop_all()
    assert not supervisor.running("slow")
