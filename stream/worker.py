"""Running a stream worker as a process: ``tollgate worker``."""

from __future__ import annotations

from faust.worker import Worker

from stream.app import build_app
from tollgate.settings import Settings


def run(settings: Settings, bootstrap_servers: str, *, loglevel: str = "warning") -> None:
    """Run the worker until SIGINT or SIGTERM; Faust commits what was processed on the way out."""
    app = build_app(settings, bootstrap_servers)
    app.tollgate_metrics.serve(settings.stream.web_port)  # type: ignore[attr-defined]
    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
