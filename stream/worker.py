"""Running a stream worker as a process: ``tollgate worker``."""

from __future__ import annotations

import logging
from typing import Any

import mode.loop
from faust.worker import Worker

from stream.gc_tuning import fewer_collections
from tollgate.logs import configure_logging
from tollgate.settings import Settings


class _Worker(Worker):  # type: ignore[misc]
    """Faust's worker, logging as every Tollgate process does.

    Faust configures the root logger itself (at DEBUG, whatever level it is given, which
    costs a log record per message sent); Tollgate's configuration is put back after.
    """

    def __init__(self, *args: Any, log_level: str, log_json: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log_level = log_level
        self._log_json = log_json

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        configure_logging(self._log_level, json_lines=self._log_json)


def run(settings: Settings, bootstrap_servers: str) -> None:
    """Run the worker until SIGINT or SIGTERM; each stage finishes and commits its batch."""
    mode.loop.use("uvloop")
    from stream.app import build_app

    settings.stream.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = build_app(settings, bootstrap_servers)
    app.tollgate_metrics.serve(settings.stream.web_port)  # type: ignore[attr-defined]
    with fewer_collections():
        _Worker(
            app,
            loglevel=settings.log.level.upper(),
            quiet=True,
            redirect_stdouts=False,
            log_level=settings.log.level,
            log_json=settings.log.format == "json",
        ).execute_from_commandline()
