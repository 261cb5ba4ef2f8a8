"""Child processes that must stay up: started in order, watched, restarted, stopped in order.

``tollgate up`` runs each part of the pipeline (worker, sink, gateway, reporting API) as its
own ``tollgate <command>`` process under a ``Supervisor``. A part counts as started only
once its readiness probe answers; one that exits before that fails the start with the
tail of its log. A part that crashes later is restarted, with a growing pause between
attempts so that a part that cannot run does not spin, and every exit and restart is
reported.

Children run in their own session, so a Ctrl-C typed in the terminal reaches only the
supervisor, which then stops the parts in the order that loses nothing; and each child
is asked by Linux to die with the supervisor, should the supervisor itself be killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tollgate.broker import die_with_parent
from tollgate.errors import TollgateError

RESTART_PAUSES_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pause before the n-th restart in a row; a part that ran for ``STABLE_S`` starts over."""
STABLE_S = 60.0
_LOG_TAIL_LINES = 15


class PartFailed(TollgateError):
    """A part could not be started."""


class StartInterrupted(TollgateError):
    """A stop was asked for while a part was starting."""


@dataclass(frozen=True)
class Part:
    """One process of the pipeline and how to tell that it is up."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    ready: Callable[[], bool]
    """True once the part serves; polled while it starts."""
    address: str | None = None
    """Where it listens, for the start-up report."""
    stop_timeout_s: float = 30.0
    """How long a SIGTERM may take before SIGKILL (a gateway drains, a sink flushes)."""
    start_timeout_s: float = 60.0
    settle_s: float = 0.0
    """After its probe answers, how long it must stay up to count as started (for a part
    with no probe of its own, so that one failing at start is not reported ready)."""
    role: str = "extra"
    """What ``up`` stops it as: ``worker``, ``sink``, ``gateway``, ``reporting``, ``extra``."""
    to_terminal: bool = False
    """Print its output where ``up`` prints, instead of to its log file."""


@dataclass
class _Child:
    part: Part
    process: subprocess.Popen[bytes]
    started_at: float
    crashes: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts, watches, restarts and stops ``Part`` processes; logs go to ``log_dir``."""

    log_dir: Path
    say: Callable[[str], None]
    _children: dict[str, _Child] = field(default_factory=dict)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, part: Part, stop: threading.Event | None = None) -> None:
        """Start ``part`` and wait until it is ready; ``PartFailed`` if it is not,
        ``StartInterrupted`` if ``stop`` is set meanwhile."""
        child = _Child(part, self._spawn(part), time.monotonic())
        self._children[part.name] = child
        deadline = time.monotonic() + part.start_timeout_s
        ready_at: float | None = None
        while True:
            code = child.process.poll()
            if code is not None:
                raise PartFailed(
                    f"{part.name} exited with {_exit_text(code)} while starting; "
                    f"the end of {self.log_path(part.name)}:\n{self._log_tail(part.name)}"
                )
            now = time.monotonic()
            if ready_at is None and _probe(part):
                ready_at = now
            if ready_at is not None and now - ready_at >= part.settle_s:
                return
            if now > deadline:
                raise PartFailed(
                    f"{part.name} was not ready after {part.start_timeout_s:.0f} s; "
                    f"the end of {self.log_path(part.name)}:\n{self._log_tail(part.name)}"
                )
            if stop is not None and stop.wait(0.1):
                raise StartInterrupted(f"stopped while {part.name} was starting")
            if stop is None:
                time.sleep(0.1)

    def check(self) -> None:
        """Notice parts that exited and restart them when their pause is over."""
        now = time.monotonic()
        for name, child in self._children.items():
            if child.restart_at is None:
                code = child.process.poll()
                if code is None:
                    continue
                if now - child.started_at >= STABLE_S:
                    child.crashes = 0
                pause = RESTART_PAUSES_S[min(child.crashes, len(RESTART_PAUSES_S) - 1)]
                child.crashes += 1
                child.restart_at = now + pause
                self.say(
                    f"! {name} exited with {_exit_text(code)}; restarting in {pause:.0f} s "
                    f"(crash {child.crashes}, log: {self.log_path(name)})"
                )
            elif now >= child.restart_at:
                child.process = self._spawn(child.part)
                child.started_at = now
                child.restart_at = None
                self.say(f"  {name} restarted (pid {child.process.pid})")

    def pid(self, name: str) -> int | None:
        child = self._children.get(name)
        return None if child is None else child.process.pid

    def running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.process.poll() is None

    def stop(self, name: str, timeout_s: float | None = None) -> int | None:
        """Stop one part: SIGTERM, then SIGKILL after ``timeout_s`` (default: the part's).
        Returns its exit code."""
        child = self._children.pop(name, None)
        if child is None:
            return None
        process = child.process
        timeout_s = child.part.stop_timeout_s if timeout_s is None else timeout_s
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.say(f"! {name} did not stop in {timeout_s:.0f} s; killed")
                _signal_group(process, signal.SIGKILL)
                process.wait()
        return process.returncode

    def stop_all(self, timeout_s: float | None = None) -> None:
        """Stop every part, the last started first."""
        for name in reversed(list(self._children)):
            self.stop(name, timeout_s)

    def _spawn(self, part: Part) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(part.name).open("ab") as log:
            return subprocess.Popen(
                list(part.argv),
                env=dict(part.env),
                stdin=subprocess.DEVNULL,
                stdout=None if part.to_terminal else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )

    def _log_tail(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return "    (no log)"
        return "\n".join(f"    {line}" for line in lines[-_LOG_TAIL_LINES:]) or "    (empty)"


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    """Signal the part and whatever it started: each part leads its own session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _probe(part: Part) -> bool:
    try:
        return part.ready()
    except Exception:  # a probe that cannot connect yet is simply "not ready"
        return False


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def tollgate_argv(*command: str) -> list[str]:
    """The command line of ``tollgate <command>`` run by this very interpreter."""
    return [sys.executable, "-m", "tollgate.cli", *command]


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``overrides``."""
    env = dict(os.environ)
    env.update(overrides)
    return env
