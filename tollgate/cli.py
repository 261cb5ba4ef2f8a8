"""The ``tollgate`` command: one entry point for every Tollgate process."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from tollgate import __version__
from tollgate.broker import running_broker
from tollgate.errors import TollgateError
from tollgate.logs import configure_logging
from tollgate.settings import Settings, load_settings


class _Context:
    def __init__(self, config: Path | None) -> None:
        self.config = config

    def settings(self) -> Settings:
        return load_settings(config_file=self.config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tollgate")
@click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML settings file (default: $TOLLGATE_CONFIG). Environment variables win over it.",
)
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Tollgate: usage metering and cost governance for AI API calls.

    The gateway meters every AI call onto Kafka; stream workers price it, keep budgets
    and raise alerts; a Parquet lake answers the questions.
    """
    ctx.obj = _Context(config)


@cli.command()
@click.option("--log", type=click.Path(path_type=Path, dir_okay=False), help="Broker log file.")
@click.pass_obj
def broker(obj: _Context, log: Path | None) -> None:
    """Run the embedded Kafka broker with every Tollgate topic, until Ctrl-C.

    If KAFKA_BOOTSTRAP_SERVERS is set, nothing is started: the topics are created on
    that cluster and the command exits.
    """
    settings = obj.settings()
    with running_broker(settings.kafka, log_path=log) as bootstrap:
        topics = settings.kafka.topics()
        click.echo(f"broker ready at {bootstrap} with topics under {topics.usage!r} & co.")
        if not settings.kafka.embedded:
            return
        click.echo(f"  export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
        click.echo("embedded broker keeps data in memory only; Ctrl-C stops it.")
        _wait_for_stop_signal()
    click.echo("broker stopped.")


@cli.command()
@click.option("--port", type=int, default=None, help="Listen port (default: settings).")
@click.pass_obj
def gateway(obj: _Context, port: int | None) -> None:
    """Run the gateway: the OpenAI- and Anthropic-compatible metering proxy.

    Needs a broker: KAFKA_BOOTSTRAP_SERVERS, or run `tollgate up` for everything at once.
    """
    import os

    from gateway.server import resolve_parts, run

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    if port is not None:
        settings = settings.model_copy(
            update={"gateway": settings.gateway.model_copy(update={"port": port})}
        )
    if settings.kafka.bootstrap_servers is None:
        raise click.UsageError(
            "the gateway needs a broker: set KAFKA_BOOTSTRAP_SERVERS "
            "(`tollgate broker` prints it), or use `tollgate up`"
        )
    run(resolve_parts(settings, os.environ, settings.kafka.bootstrap_servers))


@cli.command()
@click.pass_obj
def worker(obj: _Context) -> None:
    """Run a stream worker: price usage, keep budgets, detect anomalies, deliver alerts.

    Start several to scale out; they share the work by topic partitions.
    """
    from stream.worker import run

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    if settings.kafka.bootstrap_servers is None:
        raise click.UsageError(
            "the worker needs a broker: set KAFKA_BOOTSTRAP_SERVERS "
            "(`tollgate broker` prints it), or use `tollgate up`"
        )
    run(settings, settings.kafka.bootstrap_servers)


def _planned(name: str, what: str) -> None:
    @cli.command(name=name, help=f"{what} (not available in this build yet).")
    def command() -> None:
        raise click.UsageError(f"`tollgate {name}` is not available in this build yet.")


_planned("up", "Start the whole pipeline on this machine")
_planned("demo", "Run the pipeline with a fake provider and demo traffic")
_planned("report", "Serve the reporting API and dashboard over the lake")


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except TollgateError as error:
        click.echo(f"tollgate: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
