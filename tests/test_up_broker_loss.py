"""``tollgate up`` when its embedded broker dies: every part starts again on a new one."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.conftest import Providers
from tests.test_e2e import GLOBEX_KEY, _chat, _lake_ids, _wait, running_up

pytestmark = pytest.mark.timeout(240)


def _broker_pid(address: str) -> int:
    """The embedded broker process listening on ``address``, found in /proc."""
    wanted = f"tcp://{address}".encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"broker" in args and wanted in args:
            pids.append(int(cmdline.parent.name))
    assert len(pids) == 1, f"broker processes for {address}: {pids}"
    return pids[0]


def test_a_dead_broker_is_restarted_with_every_part(
    tmp_path: Path, fake_providers: Providers
) -> None:
    with running_up(tmp_path, fake_providers) as up:
        assert _chat(up, GLOBEX_KEY)[0] == 200
        before = set(up.sent_ids)
        _wait(lambda: before <= set(_lake_ids(up.lake)), 60, "the first call in the lake")

        died_at = len(up.lines)
        os.kill(_broker_pid(up.bootstrap()), signal.SIGKILL)
        up.wait_for_line(re.compile("embedded broker exited"), 30, after=died_at)
        up.wait_for_line(re.compile(r"✓ reporting ready"), 90, after=died_at)
        old_pids = {pid for line in up.lines[:died_at] if (pid := _pid_in(line))}
        new_pids = {pid for line in up.lines[died_at:] if (pid := _pid_in(line))}
        restarted = {
            m[1] for line in up.lines[died_at:] if (m := re.search(r"✓ (\S+) ready", line))
        }
        assert restarted == {"worker-1", "sink", "compactor", "gateway", "reporting"}
        assert not old_pids & new_pids  # all new processes

        # The pipeline works on the new broker: a call made now reaches the lake.
        assert _chat(up, GLOBEX_KEY)[0] == 200
        after = set(up.sent_ids) - before
        _wait(lambda: after <= set(_lake_ids(up.lake)), 60, "a call on the new broker")
        ids = _lake_ids(up.lake)
        assert len(ids) == len(set(ids))
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(120) == 0, "\n".join(up.lines)


def _pid_in(line: str) -> int | None:
    match = re.search(r"ready in [\d.]+ s \(pid (\d+)\)", line)
    return int(match.group(1)) if match else None
