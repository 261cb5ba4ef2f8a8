"""``tollgate up``: the whole pipeline on one machine, supervised.

The broker first (embedded, unless ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster), then the
stream workers, the sink, the gateway and the reporting API, each a ``tollgate <command>``
process under a ``Supervisor`` that restarts what crashes. Ctrl-C (or SIGTERM, or SIGHUP)
stops them in the order that loses nothing: what calls the gateway, the reporting API and
the gateway itself, which finishes its calls and flushes their usage events; then the
workers, once they have committed everything on their topics; then the sink, once it has
written everything the workers produced, the last of it included; the broker last. With
the embedded broker, which forgets every record when it stops, those waits are what keep
every event; ``up`` exits 1 if it had to stop with records left.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiokafka.errors import KafkaError

from tollgate.broker import EmbeddedBroker, ensure_topics, free_port, running_broker
from tollgate.errors import SettingsError, TollgateError
from tollgate.group_lag import group_lag
from tollgate.private_files import make_private_dirs
from tollgate.settings import CONFIG_ENV, Settings
from tollgate.supervisor import Part, StartInterrupted, Supervisor, child_env, tollgate_argv

ADMIN_KEY_ENV = "TOLLGATE_REPORTING_ADMIN_KEY"
COMPACT_EVERY_S = 600
"""How often ``up``'s compactor merges the lake's closed days."""
DRAIN_TIMEOUT_S = 60.0
"""How long a stop waits for a consumer group to catch up before giving up."""


class PortTaken(TollgateError):
    """A port a part must listen on is in use, or named twice."""


@dataclass(frozen=True)
class UpOptions:
    """What ``up`` runs, beyond the settings."""

    workers: int = 1
    log_dir: Path = Path("var/log")
    config_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    """Settings handed to every part (``TOLLGATE_*`` variables)."""


@dataclass(frozen=True)
class Listener:
    """A port a part listens on, and the setting that moves it."""

    part: str
    host: str
    port: int
    setting: str


def worker_ports(settings: Settings, workers: int) -> list[int]:
    """Each worker's metrics port: ``web_port`` and up, or free ports if it is 0."""
    base = settings.stream.web_port
    return [base + i if base else free_port() for i in range(workers)]


def listeners(settings: Settings, worker_ports: list[int]) -> list[Listener]:
    """Every port ``up`` will listen on, so that a taken one is reported before anything starts."""
    found = [
        Listener("gateway", settings.gateway.host, settings.gateway.port, "TOLLGATE_GATEWAY_PORT"),
        Listener(
            "reporting", settings.reporting.host, settings.reporting.port, "TOLLGATE_REPORTING_PORT"
        ),
    ]
    found += [
        Listener(f"worker-{i + 1}", "127.0.0.1", port, "TOLLGATE_STREAM_WEB_PORT")
        for i, port in enumerate(worker_ports)
    ]
    if settings.lake.sink_metrics_port:
        found.append(
            Listener(
                "sink",
                "127.0.0.1",
                settings.lake.sink_metrics_port,
                "TOLLGATE_LAKE_SINK_METRICS_PORT",
            )
        )
    return found


def check_ports(wanted: Sequence[Listener]) -> None:
    """Raise ``PortTaken`` naming the part and the setting if any port is in use or used twice."""
    seen: dict[int, Listener] = {}
    for listener in wanted:
        if listener.port == 0:
            continue
        other = seen.setdefault(listener.port, listener)
        if other is not listener:
            raise PortTaken(
                f"port {listener.port} is set for both {other.part} ({other.setting}) and "
                f"{listener.part} ({listener.setting}); give each its own"
            )
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((listener.host, listener.port))
            except OSError as error:
                raise PortTaken(
                    f"port {listener.port} on {listener.host} ({listener.part}) is taken "
                    f"({error.strerror}); free it or set {listener.setting}"
                ) from None


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness probe: ``url`` answers 2xx."""

    def probe() -> bool:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= response.status < 300

    return probe


def tcp_open(host: str, port: int) -> Callable[[], bool]:
    """A readiness probe: something accepts connections on ``host:port``."""

    def probe() -> bool:
        with socket.create_connection((host, port), timeout=0.5):
            return True

    return probe


def plan(
    settings: Settings, bootstrap: str, options: UpOptions, worker_ports: list[int]
) -> list[Part]:
    """The parts, in start order, with their environments and probes."""
    base = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    if settings.kafka.embedded:
        # The parts see a bootstrap address, as for any cluster; tell them it is the
        # embedded broker's, which refuses idempotent producers and joins groups slowly
        # unless the session timeout is short.
        kafka = settings.kafka
        base["TOLLGATE_KAFKA_IDEMPOTENCE"] = str(kafka.effective_idempotence).lower()
        base["TOLLGATE_KAFKA_SESSION_TIMEOUT_S"] = str(kafka.effective_session_timeout_s)
    base.update(options.extra_env)
    if options.config_file is not None:
        base[CONFIG_ENV] = str(options.config_file)
    parts = [
        Part(
            f"worker-{i + 1}",
            tollgate_argv("worker"),
            child_env(
                {
                    **base,
                    "TOLLGATE_STREAM_WEB_PORT": str(port),
                    "TOLLGATE_STREAM_DATA_DIR": str(settings.stream.data_dir / f"w{i + 1}"),
                }
            ),
            tcp_open("127.0.0.1", port),
            address=f"metrics http://127.0.0.1:{port}/metrics",
            settle_s=1.0,
            role="worker",
        )
        for i, port in enumerate(worker_ports)
    ]
    sink_port = settings.lake.sink_metrics_port
    parts.append(
        Part(
            "sink",
            tollgate_argv("sink"),
            child_env(base),
            tcp_open("127.0.0.1", sink_port) if sink_port else lambda: True,
            address=f"metrics http://127.0.0.1:{sink_port}/metrics" if sink_port else None,
            settle_s=2.0,
            role="sink",
        )
    )
    parts.append(
        Part(
            "compactor",
            tollgate_argv("compact", "--every", str(COMPACT_EVERY_S)),
            child_env(base),
            lambda: True,
            settle_s=1.0,
            role="extra",  # crash-safe at any instant: stopped first
        )
    )
    gateway_url = f"http://{_client_host(settings.gateway.host)}:{settings.gateway.port}"
    parts.append(
        Part(
            "gateway",
            tollgate_argv("gateway"),
            child_env(base),
            http_ok(f"{gateway_url}/healthz"),
            address=f"{gateway_url}/v1  (OpenAI and Anthropic APIs)",
            stop_timeout_s=40.0,
            role="gateway",
        )
    )
    reporting_url = f"http://{_client_host(settings.reporting.host)}:{settings.reporting.port}"
    parts.append(
        Part(
            "reporting",
            tollgate_argv("report"),
            child_env(base),
            http_ok(f"{reporting_url}/healthz"),
            address=f"{reporting_url}/dashboard/  (reporting API under /v1, docs at /docs)",
            role="reporting",
        )
    )
    return parts


def run_up(
    settings: Settings,
    options: UpOptions,
    say: Callable[[str], None] = print,
    *,
    extra_parts: Callable[[Settings, str], list[Part]] | None = None,
    started: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the pipeline until ``stop`` is set (or a stop signal); returns the exit code.

    ``extra_parts`` adds parts started after the pipeline (the demo's provider and
    traffic); ``started`` is called once everything is up (the demo's instructions).
    """
    if settings.gateway.routes_file is None:
        raise SettingsError(
            "the gateway needs a routes file: set TOLLGATE_GATEWAY_ROUTES_FILE "
            "(deploy/routes.yaml is an example), or run `tollgate demo`"
        )
    ports = worker_ports(settings, options.workers)
    check_ports(listeners(settings, ports))
    if settings.reporting.admin_key is None and settings.reporting.keys_file is None:
        # Without a key the reporting API refuses every question: make one for this run.
        key = secrets.token_urlsafe(18)
        options = replace(options, extra_env={**options.extra_env, ADMIN_KEY_ENV: key})
        say(f"  no reporting key configured: this run's admin key is {key}")
    make_private_dirs(settings.lake.path)  # the reporting API reads it at once
    stop = stop or _stop_on_signals()
    supervisor = Supervisor(options.log_dir, say)
    complete = True
    with _broker(settings, options.log_dir, say) as broker:
        parts = plan(settings, broker.bootstrap, options, ports)
        if extra_parts is not None:
            parts += extra_parts(settings, broker.bootstrap)
        try:
            _start_all(supervisor, parts, stop, say)
            _report(say, broker, parts, options, settings)
            if started is not None:
                started()
            while not stop.wait(0.25):
                supervisor.check()
                if broker.died(say):
                    # Stopped before the new broker is up, so that no part carries state
                    # from the old log (offsets, changelogs) into the new one.
                    say("  stopping every part; they start again on a new broker …")
                    for part in reversed(parts):
                        # Workers and sinks have no broker to commit to: a short grace, then
                        # SIGKILL, which they survive without loss or double count. The
                        # gateway keeps its full grace to spool what it could not send.
                        quick = part.role in {"worker", "sink"}
                        supervisor.stop(part.name, 5.0 if quick else None)
                    broker.restart()
                    _start_all(supervisor, parts, stop, say)
        except StartInterrupted:
            say("stopped while starting.")
        else:
            say("stopping (Ctrl-C again does not hurry it: in-flight work is being saved) …")
            complete = _stop_in_order(supervisor, parts, settings, broker, say)
        finally:
            supervisor.stop_all()
    say("stopped." if complete else "stopped, with records left unprocessed (see above).")
    return 0 if complete else 1


def _start_all(
    supervisor: Supervisor, parts: list[Part], stop: threading.Event, say: Callable[[str], None]
) -> None:
    for part in parts:
        began = time.monotonic()
        say(f"  starting {part.name} …")
        supervisor.start(part, stop)
        took = time.monotonic() - began
        say(f"✓ {part.name} ready in {took:.1f} s (pid {supervisor.pid(part.name)})")


@dataclass
class _RunningBroker:
    """The broker ``up`` runs against, and the restart of the embedded one if it dies."""

    bootstrap: str
    settings: Settings
    embedded: EmbeddedBroker | None

    def died(self, say: Callable[[str], None]) -> bool:
        """Whether the embedded broker died (and, if so, say it)."""
        broker = self.embedded
        if broker is None or broker.process is None or broker.process.poll() is None:
            return False
        say(
            f"! embedded broker exited with code {broker.process.returncode}: its records "
            "are gone; the workers rebuild open budgets from the lake"
        )
        return True

    def restart(self) -> None:
        """Start the embedded broker again, on its old address, with every topic."""
        assert self.embedded is not None
        self.embedded.start()
        kafka = self.settings.kafka
        asyncio.run(ensure_topics(kafka, self.bootstrap, kafka.topics()))


@contextlib.contextmanager
def _broker(
    settings: Settings, log_dir: Path, say: Callable[[str], None]
) -> Iterator[_RunningBroker]:
    kafka = settings.kafka
    if not kafka.embedded:
        assert kafka.bootstrap_servers is not None
        say(f"  using the Kafka cluster at {kafka.bootstrap_servers} …")
        with running_broker(kafka) as bootstrap:
            yield _RunningBroker(bootstrap, settings, None)
        return
    say("  starting the embedded broker …")
    log_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=log_dir / "broker.log").start()
    try:
        asyncio.run(ensure_topics(kafka, broker.bootstrap_servers, kafka.topics()))
        say(f"✓ broker ready at {broker.bootstrap_servers} (in memory: the lake is the record)")
        yield _RunningBroker(broker.bootstrap_servers, settings, broker)
    finally:
        broker.stop()


def _stop_in_order(
    supervisor: Supervisor,
    parts: list[Part],
    settings: Settings,
    broker: _RunningBroker,
    say: Callable[[str], None],
) -> bool:
    """Stop the parts so that nothing is left on the broker; False if something was."""
    topics = settings.kafka.topics()
    stream = settings.stream
    sink_group = f"{topics.prefix}{settings.lake.sink_group_id}"
    by_role: dict[str, list[Part]] = {}
    for part in parts:
        by_role.setdefault(part.role, []).append(part)
    complete = True
    stages: list[tuple[str, list[tuple[str, list[str]]], str | None]] = [
        ("extra", [], None),
        ("reporting", [], None),
        ("gateway", [], "finishing calls, flushing usage events"),
        (
            "worker",
            [  # the meter first: it feeds the budgets
                (stream.group_id(topics.prefix, "meter"), [topics.usage]),
                (stream.group_id(topics.prefix, "budgets"), [topics.budget_contributions]),
                (stream.group_id(topics.prefix), [topics.alerts]),
            ],
            None,
        ),
        ("sink", [(sink_group, [topics.priced, topics.alerts, topics.budget_state])], None),
    ]
    for role, drains, doing in stages:
        for group, group_topics in drains if broker.embedded is not None else []:
            complete &= _drain(supervisor, settings, broker.bootstrap, group, group_topics, say)
        for part in reversed(by_role.get(role, [])):
            say(f"  stopping {part.name}" + (f" ({doing})" if doing else "") + " …")
            supervisor.stop(part.name)
    return complete


def _drain(
    supervisor: Supervisor,
    settings: Settings,
    bootstrap: str,
    group: str,
    topics: list[str],
    say: Callable[[str], None],
) -> bool:
    """Wait until ``group`` has committed every record on ``topics``; False on giving up.

    Parts are still watched meanwhile: one that crashes is restarted, and catches up.
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    said = 0.0
    while True:
        supervisor.check()
        try:
            left = sum(asyncio.run(group_lag(settings.kafka, bootstrap, group, topics)).values())
        except (KafkaError, TimeoutError) as error:
            say(f"! cannot read {group}'s progress ({error!r}); not waiting for it")
            return False
        if left == 0:
            say(f"✓ {group} caught up")
            return True
        now = time.monotonic()
        if now > deadline:
            say(f"! gave up waiting after {DRAIN_TIMEOUT_S:.0f} s: {group} left {left} records")
            return False
        if now - said > 2:
            say(f"  waiting for {group}: {left} records to go …")
            said = now
        time.sleep(0.5)


def _report(
    say: Callable[[str], None],
    broker: _RunningBroker,
    parts: list[Part],
    options: UpOptions,
    settings: Settings,
) -> None:
    say("")
    say("Tollgate is up:")
    for part in parts:
        if part.address:
            say(f"  {part.name:<10} {part.address}")
    say(f"  {'broker':<10} {broker.bootstrap}")
    say(f"  {'lake':<10} {settings.lake.path.resolve()}")
    say(f"  {'logs':<10} {options.log_dir.resolve()}/<part>.log")
    say("Ctrl-C stops everything without losing an event.")


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    return stop
