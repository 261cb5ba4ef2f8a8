"""Every answered call metered, whatever dies: the gateway (SIGKILL) or the embedded broker.

``tollgate up`` runs every part as a real process; 16 callers with the official OpenAI SDK
keep calling through the gateway while a part is killed with SIGKILL. Every call that got
an answer is then looked for in the lake.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from tests.conftest import Providers
from tests.test_e2e import GLOBEX_KEY, Pipeline, _chat, _lake_ids, _wait, running_up
from tests.test_up_broker_loss import _broker_pid

pytestmark = pytest.mark.timeout(300)

CALLERS = 16


@contextmanager
def traffic(up: Pipeline, callers: int = CALLERS) -> Iterator[list[int]]:
    """``callers`` threads calling until the block ends; yields the answered-call count.

    A call that got no answer (the gateway was dead) is not counted, and is tried again.
    """
    stop = threading.Event()
    answered = [0]

    def call() -> None:
        while not stop.is_set():
            try:
                _chat(up, GLOBEX_KEY)
                answered[0] += 1
            except (openai.APIConnectionError, openai.APITimeoutError):
                time.sleep(0.05)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    try:
        yield answered
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def _missing_and_doubled(up: Pipeline) -> tuple[set[str], dict[str, int]]:
    sent = set(up.sent_ids)
    ids = _lake_ids(up.lake)
    doubled = {event_id: n for event_id, n in Counter(ids).items() if n > 1}
    return sent - set(ids), doubled


def test_a_gateway_killed_three_times_under_load_loses_no_answered_call(
    tmp_path: Path, fake_providers: Providers
) -> None:
    with running_up(tmp_path, fake_providers) as up, traffic(up) as answered:
        for _ in range(3):
            _wait(lambda n=answered[0]: answered[0] > n + 200, 60, "calls answered")
            killed_at = len(up.lines)
            os.kill(up.pid_of("gateway"), signal.SIGKILL)
            up.wait_for_line(re.compile(r"gateway restarted"), 60, after=killed_at)
        _wait(lambda n=answered[0]: answered[0] > n + 200, 60, "calls after the last restart")

    assert sum("gateway exited with signal SIGKILL" in line for line in up.lines) == 3
    sent = set(up.sent_ids)
    assert len(sent) > 800
    _wait(lambda: sent <= set(_lake_ids(up.lake)), 120, "every answered call in the lake")
    missing, doubled = _missing_and_doubled(up)
    assert not missing
    assert not doubled


def test_an_embedded_broker_killed_under_load_loses_no_answered_call(
    tmp_path: Path, fake_providers: Providers
) -> None:
    """The gateway ships again what the dead broker had acknowledged (its log keeps it).

    Copies of events the lake already holds are the stream's to drop (the meter and sink
    rebuilt after a broker loss); until they do, the lake shows them twice.
    """
    with running_up(tmp_path, fake_providers) as up:
        with traffic(up) as answered:
            _wait(lambda: answered[0] > 300, 60, "calls answered")
            died_at = len(up.lines)
            os.kill(_broker_pid(up.bootstrap()), signal.SIGKILL)
            up.wait_for_line(re.compile("embedded broker exited"), 30, after=died_at)
            up.wait_for_line(re.compile(r"✓ gateway ready"), 90, after=died_at)
            _wait(lambda n=answered[0]: answered[0] > n + 200, 60, "calls on the new broker")
        sent = set(up.sent_ids)
        _wait(lambda: sent <= set(_lake_ids(up.lake)), 120, "every answered call in the lake")
        missing, doubled = _missing_and_doubled(up)
        assert not missing
        assert any("lost its history" in line for line in _gateway_log(tmp_path))
        if doubled:
            pytest.xfail(
                f"{len(doubled)} events twice in the lake: the stream does not yet drop "
                "copies of events the lake holds after a broker loss (issue 14, stream side)"
            )


def _gateway_log(directory: Path) -> list[str]:
    return (directory / "logs" / "gateway.log").read_text().splitlines()
