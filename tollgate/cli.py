"""The ``tollgate`` command: one entry point for every Tollgate process."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import click

from tollgate import __version__
from tollgate.broker import embedded_broker_environment, running_broker
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

    Prints the settings every other process needs to use it (`export ...`).

    If KAFKA_BOOTSTRAP_SERVERS is set, nothing is started: the topics are created on
    that cluster and the command exits.
    """
    settings = obj.settings()
    with running_broker(settings.kafka, log_path=log) as bootstrap:
        topics = settings.kafka.topics()
        click.echo(f"broker ready at {bootstrap} with topics under {topics.usage!r} & co.")
        if not settings.kafka.embedded:
            return
        click.echo(f"  export {' '.join(embedded_broker_environment(settings.kafka, bootstrap))}")
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
    run(resolve_parts(settings, os.environ, _bootstrap(settings, "gateway")))


@cli.command()
@click.pass_obj
def worker(obj: _Context) -> None:
    """Run a stream worker: price usage, keep budgets, detect anomalies, deliver alerts.

    Start several to scale out; they share the work by topic partitions.
    """
    from stream.worker import run

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    run(settings, _bootstrap(settings, "worker"))


@cli.command()
@click.option("--port", type=int, default=None, help="Listen port (default: settings).")
@click.option(
    "--lake",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Lake directory (default: settings' lake.path).",
)
@click.pass_obj
def report(obj: _Context, port: int | None, lake: Path | None) -> None:
    """Serve the reporting API and dashboard over the lake, until Ctrl-C.

    Needs a reporting key: TOLLGATE_REPORTING_ADMIN_KEY, or reporting.keys_file.
    """
    from analytics.reporting.server import run

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    run(settings, lake_path=lake, port=port)


@cli.command()
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus /metrics on this port (default: settings; 0: not served).",
)
@click.pass_obj
def sink(obj: _Context, metrics_port: int | None) -> None:
    """Run the lake sink: priced events, alerts and budget states into the Parquet lake.

    Exactly once: where each topic partition resumes is read from the lake's file
    names. Start several to share the partitions. SIGINT/SIGTERM write the buffers out.
    """
    from stream.sink import run

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    if metrics_port is not None:
        settings = settings.model_copy(
            update={"lake": settings.lake.model_copy(update={"sink_metrics_port": metrics_port})}
        )
    run(settings, _bootstrap(settings, "sink"))


@cli.command()
@click.option(
    "--day",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Compact this UTC date only (default: every closed day that needs it).",
)
@click.option(
    "--sub-lake",
    "sub_lakes",
    type=click.Choice(["priced", "alerts", "budget_state"]),
    multiple=True,
    help="Only this sub-lake (repeatable; default: all).",
)
@click.option("--force", is_flag=True, help="Compact --day even if it is today (UTC).")
@click.option(
    "--every",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Keep running: compact the closed days every this many seconds, until Ctrl-C.",
)
@click.pass_obj
def compact(
    obj: _Context,
    day: datetime | None,
    sub_lakes: tuple[str, ...],
    force: bool,
    every: float | None,
) -> None:
    """Merge a closed day's small lake files into one per topic partition.

    Rows are kept exactly (second copies of an event or alert dropped); safe to run
    while the sink writes, and to interrupt. `tollgate up` runs it with --every.
    """
    from stream.compaction import compact_closed_days, compact_day
    from tollgate.lake import SCHEMAS

    settings = obj.settings()
    configure_logging(settings.log.level, json_lines=settings.log.format == "json")
    if every is not None and day is not None:
        raise click.UsageError("--every compacts the closed days; it takes no --day")
    lake = settings.lake.path
    stop = _stop_event() if every is not None else None
    while True:
        results = []
        for sub_lake in sub_lakes or tuple(SCHEMAS):
            if day is None:
                results += compact_closed_days(lake, sub_lake)
            else:
                results.append(compact_day(lake, sub_lake, day.date(), force=force))
        for result in results:
            click.echo(result.summary())
        if stop is None:
            if not results:
                click.echo("nothing to compact.")
            return
        if stop.wait(every):
            return


@cli.command()
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Stream workers to run.")
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/log"),
    show_default=True,
    help="Where each part writes its log.",
)
@click.pass_obj
def up(obj: _Context, workers: int, log_dir: Path) -> None:
    """Start the whole pipeline on this machine, supervised, until Ctrl-C.

    The embedded broker (unless KAFKA_BOOTSTRAP_SERVERS names a cluster), the stream
    workers, the sink, the gateway and the reporting API. A crashed part is restarted;
    Ctrl-C stops everything without losing an event.
    """
    from tollgate.up import UpOptions, run_up

    settings = obj.settings()
    options = UpOptions(workers=workers, log_dir=log_dir, config_file=obj.config)
    sys.exit(run_up(settings, options, click.echo))


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo keeps its config, lake and logs.",
)
@click.option("--keep", is_flag=True, help="Keep the lake of an earlier demo run.")
@click.option(
    "--spike-at", type=float, default=45.0, show_default=True, help="Seconds to the cost spike."
)
def demo(directory: Path, keep: bool, spike_at: float) -> None:
    """Run the pipeline with a fake provider, demo tenants and their traffic.

    Within a minute a budget is spent (calls get 429), thresholds alert and an injected
    cost spike raises an anomaly alert; the dashboard shows it all.
    """
    from tollgate.demo.run import run_demo

    sys.exit(run_demo(directory, click.echo, spike_at_s=spike_at, fresh=not keep))


@cli.command(name="seed-lake")
@click.option("--events", type=click.IntRange(min=0), required=True, help="Priced events to write.")
@click.option("--days", type=click.IntRange(1, 3660), default=30, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Lake directory (default: settings' lake.path).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same lake.")
@click.pass_obj
def seed_lake(obj: _Context, events: int, days: int, out: Path | None, seed: int) -> None:
    """Write a realistic synthetic lake for demos, tests and benchmarks.

    Tenants, teams, keys and users call OpenAI, Azure OpenAI and Anthropic models over the
    last DAYS days (priced with the shipped catalog), with a spend spike, a new key and an
    outage planted, and the budget states and alerts to match.
    """
    from analytics.seed import seed_lake as write_lake

    path = out if out is not None else obj.settings().lake.path
    summary = write_lake(path, events, days=days, seed=seed)
    click.echo(
        f"wrote {summary.events:,} events (${summary.cost_usd:,.2f}) from "
        f"{summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M} UTC into {path} "
        f"in {summary.seconds:.1f} s: {summary.files} files, {summary.alerts} alerts, "
        f"{summary.budget_states} budget states"
    )
    for incident in summary.incidents:
        click.echo(f"  incident: {incident}")


class _Instant(click.ParamType):
    """An ISO-8601 instant with its offset (``2026-03-01T00:00:00Z``), or a date (UTC midnight)."""

    name = "instant"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None):  # type: ignore[no-untyped-def]
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not an ISO-8601 instant such as 2026-03-01T00:00:00Z")
        if moment.tzinfo is None:
            if len(text) != 10:
                self.fail(f"{text!r} names no offset; add one, e.g. Z or +02:00")
            moment = moment.replace(tzinfo=UTC)
        return moment


_LAKE_OPTION = click.option(
    "--lake",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Lake directory (default: settings' lake.path).",
)
_TENANT_OPTION = click.option("--tenant", default=None, help="Only this tenant's calls.")


@cli.command()
@click.option(
    "--catalog",
    "catalog_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The catalog to price with: Tollgate YAML (contracts included) or LiteLLM JSON.",
)
@click.option("--start", type=_Instant(), required=True, help="Start, inclusive (ISO-8601).")
@click.option("--end", type=_Instant(), required=True, help="End, exclusive (ISO-8601).")
@click.option(
    "--group-by",
    "group_by",
    multiple=True,
    default=("tenant", "model"),
    show_default=True,
    help="Dimension to group by (repeatable).",
)
@_LAKE_OPTION
@_TENANT_OPTION
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the report here (.csv or .parquet) instead of printing it as CSV.",
)
@click.pass_obj
def reprice(
    obj: _Context,
    catalog_file: Path,
    start: datetime,
    end: datetime,
    group_by: tuple[str, ...],
    lake: Path | None,
    tenant: str | None,
    out: Path | None,
) -> None:
    """What [START, END) would have cost under CATALOG, from the lake's usage facts.

    Old list and billed costs beside the new ones, per group; the lake is only read.
    """
    from analytics.query_terms import QueryError
    from analytics.report_files import write_report
    from analytics.reporting.output import OutputFormat, render
    from analytics.repricing import reprice as what_if
    from tollgate.pricing import load_catalog

    path = lake if lake is not None else obj.settings().lake.path
    try:
        table = what_if(
            path, load_catalog(catalog_file), start, end, group_by=group_by, tenant_scope=tenant
        )
    except QueryError as error:
        raise click.UsageError(str(error)) from None
    if out is None:
        body = render(table, OutputFormat.CSV, name="reprice", next_offset=None, next_url=None)
        click.echo(bytes(body.body).decode(), nl=False)
        return
    write_report(table, out)
    click.echo(f"wrote {table.num_rows} rows to {out}")


@cli.group()
def export() -> None:
    """Export the lake's costs for other tools."""


@export.command()
@click.option("--start", type=_Instant(), required=True, help="Start, inclusive (ISO-8601).")
@click.option("--end", type=_Instant(), required=True, help="End, exclusive (ISO-8601).")
@_LAKE_OPTION
@_TENANT_OPTION
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The file to write: .csv or .parquet.",
)
@click.pass_obj
def focus(
    obj: _Context,
    start: datetime,
    end: datetime,
    lake: Path | None,
    tenant: str | None,
    out: Path,
) -> None:
    """Costs of [START, END) as FinOps FOCUS 1.2 rows: one per day, tenant, team, model
    and token type, at the prices billed with the list price beside them."""
    from analytics.focus import focus_table
    from analytics.query_terms import QueryError
    from analytics.report_files import write_report
    from tollgate.pricing import load_catalog

    settings = obj.settings()
    path = lake if lake is not None else settings.lake.path
    try:
        table = focus_table(
            path, load_catalog(settings.stream.price_catalog), start, end, tenant_scope=tenant
        )
    except QueryError as error:
        raise click.UsageError(str(error)) from None
    write_report(table, out)
    click.echo(f"wrote {table.num_rows} FOCUS rows to {out}")


def _bootstrap(settings: Settings, part: str) -> str:
    """The broker a part connects to; a usage error naming the setting if there is none."""
    if settings.kafka.bootstrap_servers is None:
        raise click.UsageError(
            f"the {part} needs a broker: set KAFKA_BOOTSTRAP_SERVERS "
            "(`tollgate broker` prints it), or use `tollgate up`"
        )
    return settings.kafka.bootstrap_servers


def _stop_event() -> threading.Event:
    """Set by SIGINT or SIGTERM."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait_for_stop_signal() -> None:
    _stop_event().wait()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except TollgateError as error:
        click.echo(f"tollgate: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
