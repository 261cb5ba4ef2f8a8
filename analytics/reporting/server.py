"""Serving the reporting app: in the foreground (``tollgate report``) or in a thread.

``BackgroundServer`` runs the app on a loopback port of its own in a daemon thread, for
a notebook that wants the dashboard next to its cells, and for tests that talk to a
real server.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from analytics.reporting.app import create_app
from analytics.reporting.auth import KeyRing
from analytics.reporting.catalogs import load_catalogs
from tollgate.errors import SettingsError
from tollgate.pricing import load_catalog
from tollgate.settings import Settings

log = logging.getLogger("tollgate.reporting")


NO_KEY_WARNING = (
    "no reporting key is configured, so every /v1 request is refused: set "
    "TOLLGATE_REPORTING_ADMIN_KEY or reporting.keys_file (tenant keys)"
)


def app_from_settings(settings: Settings, lake_path: Path | None = None) -> FastAPI:
    """The app over ``lake_path`` (default: the settings' lake) with the configured keys.

    With no key at all the app still serves ``/healthz``, ``/metrics`` and the dashboard's
    page, and refuses every query (as the gateway refuses every call without keys).
    """
    keys = KeyRing.from_settings(settings.reporting)
    if not len(keys):
        log.warning(NO_KEY_WARNING)
    catalog = load_catalog(settings.stream.price_catalog)
    catalogs = load_catalogs(settings.reporting.catalogs_dir)
    return create_app(lake_path or settings.lake.path, keys, catalog=catalog, catalogs=catalogs)


def run(settings: Settings, *, lake_path: Path | None = None, port: int | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    app = app_from_settings(settings, lake_path)
    host = settings.reporting.host
    sock = _bound_socket(host, settings.reporting.port if port is None else port)
    bound_port = sock.getsockname()[1]
    print(f"reporting API on http://{host}:{bound_port} (dashboard /dashboard/)", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was there before it; a quiet one makes that a normal exit, not a traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    print("reporting API stopped.", flush=True)


class BackgroundServer:
    """``app`` served on 127.0.0.1, on a free port, in a daemon thread, until ``stop()``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1") -> None:
        self._socket = _bound_socket(host, 0)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, timeout_s: float = 10) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the reporting server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now, so that a caller told the address can connect at once: calls
        # wait in the backlog until uvicorn serves them.
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock.set_inheritable(True)
    return sock
