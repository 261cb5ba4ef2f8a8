"""One typed settings object, built once at start-up and passed down.

Sources, later ones winning: defaults that run on one machine, an optional YAML file
(``TOLLGATE_CONFIG`` or ``--config``), then environment variables. Environment names
are ``TOLLGATE_<SECTION>_<FIELD>`` (sections have no underscore, so the split is
unambiguous), plus the conventional ``KAFKA_BOOTSTRAP_SERVERS``. An unknown
``TOLLGATE_`` variable, an unknown YAML key or a bad value stops start-up with a message
naming the setting. This is the only module that reads the environment.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from tollgate.errors import SettingsError
from tollgate.topics import Topics

ENV_PREFIX = "TOLLGATE_"
CONFIG_ENV = "TOLLGATE_CONFIG"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"

Port = Annotated[int, Field(ge=0, le=65535)]
"""0 asks the OS for a free port."""
Seconds = Annotated[float, Field(gt=0)]


def _comma_separated(value: Any) -> Any:
    """``"a, b"`` → ``("a", "b")``: how a list is written in an environment variable."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(Section):
    """Where the broker is and how clients talk to it."""

    bootstrap_servers: str | None = None
    """Unset: Tollgate starts its embedded broker. Set: use that cluster."""
    topic_prefix: str = ""
    partitions: Annotated[int, Field(ge=1, le=1024)] = 4
    replication_factor: Annotated[int, Field(ge=1, le=16)] = 1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    session_timeout_s: Seconds | None = None
    """Consumer-group session timeout. Unset: 3 s on the embedded broker (whose group
    joins wait this long), 30 s on a real cluster."""
    idempotence: bool | None = None
    """Idempotent producers. Unset: on for a real cluster, off for the embedded broker,
    whose memory engine refuses InitProducerId."""
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=30_000)] = 100
    """How long a fetch may wait for records. Kafka answers a waiting fetch as soon as data
    arrives, so any value works there; the embedded broker waits the whole time, so this
    bounds each hop of the pipeline's latency."""

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Self:
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError("sasl_mechanism is set but sasl_username/sasl_password are not")
        if self.security_protocol not in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}:
            raise ValueError(f"security_protocol {self.security_protocol!r} is not a Kafka one")
        return self

    @property
    def embedded(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def effective_session_timeout_s(self) -> float:
        if self.session_timeout_s is not None:
            return self.session_timeout_s
        return 3.0 if self.embedded else 30.0

    @property
    def effective_idempotence(self) -> bool:
        return (not self.embedded) if self.idempotence is None else self.idempotence

    def topics(self) -> Topics:
        return Topics(self.topic_prefix, self.partitions, self.replication_factor)


_NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
    }
)


class GatewaySettings(Section):
    """The proxy in front of the providers."""

    host: str = "127.0.0.1"
    port: Port = 8080
    routes_file: Path | None = None
    """YAML file with models, backends, API keys and JWT settings."""
    spool_dir: Path = Path("var/spool")
    """The write-ahead log of usage events: each is written here before its call's answer
    completes, shipped to the broker from here, and kept a while after (mode 700/600)."""
    spool_max_bytes: Annotated[int, Field(gt=0)] = 1 << 30
    """Bound on events not yet shipped (events kept after shipping give way first)."""
    spool_retain_s: Annotated[float, Field(ge=0)] = 300.0
    """How long shipped events are kept, to be shipped again to a broker that lost them."""
    spool_refused_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Share of ``spool_max_bytes`` that refused calls' events may take."""
    spool_fsync_s: Annotated[float, Field(ge=0, le=10)] = 0.1
    """How often the log's new writes are fsynced. Every event is written to the log before
    its answer completes, so a crash of the gateway's process (SIGKILL, OOM) loses none;
    a crash of the machine loses at most this much of them. 0: each group of events is
    fsynced before its answers complete (nothing lost to a power cut; costs throughput)."""
    max_body_bytes: Annotated[int, Field(gt=0)] = 4 << 20
    budget_fail_open: bool = True
    """Before the budget state has been read once: allow calls (open) or refuse (closed)."""
    default_max_output_tokens: Annotated[int, Field(gt=0)] = 4096
    """A call that sets no output cap is reserved this many output tokens against its
    budgets, and the upstream call is capped at it, so a call never uses more than it
    reserved. A call that needs more says so with its own ``max_tokens``."""
    budget_share_period_s: Annotated[float, Field(gt=0, le=5)] = 0.1
    """How often each instance announces its claims on the budgets to the others."""
    budget_share_delay_s: Annotated[float, Field(gt=0, le=30)] = 0.4
    """How old an announcement must be before every instance counts it: an upper bound on
    the time a claim takes to reach every instance through the broker."""
    budget_share_ttl_s: Annotated[float, Field(gt=0)] = 10.0
    """An instance silent this long is gone: its claims and its share are freed."""
    budget_wait_s: Annotated[float, Field(ge=0, le=30)] = 2.0
    """How long a call that fits its budget but not this instance's share of it waits for
    the shares to follow demand, before a 429 with a short ``Retry-After``."""
    circuit_failures: Annotated[int, Field(gt=0)] = 3
    """Consecutive failures that take a backend out of service."""
    circuit_cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    """How long a backend stays out before one trial call is let through."""
    idle_timeout_s: Seconds = 15.0
    """A connection that has not sent a complete request head for this long is closed:
    new and silent, idle between calls (keep-alive), or trickling its headers."""
    body_timeout_s: Seconds = 30.0
    """Longest time to receive a request's body once its head has arrived (else 408)."""
    max_connections: Annotated[int, Field(gt=0)] | None = None
    """Client connections served at once; more are answered 503 and closed. Unset: half
    the process's open-files limit, less a reserve (each call also holds an upstream
    connection)."""
    forward_headers: Annotated[tuple[str, ...], BeforeValidator(_comma_separated)] = ()
    """Request headers passed to providers besides the built-in allowlist: names, comma
    separated in the environment (``x-team-trace,x-experiment``). Credentials and
    connection headers cannot be named."""

    @model_validator(mode="after")
    def _no_credentials_forwarded(self) -> Self:
        named = {name.lower() for name in self.forward_headers} & _NEVER_FORWARDED
        if named:
            raise ValueError(
                f"forward_headers may not name {', '.join(sorted(named))}: credentials and "
                "connection headers never cross the gateway"
            )
        return self

    request_id_key: SecretStr | None = None
    """The secret that binds request ids to tenants (``gateway.request_ids``): the same on
    every instance. Unset: a random key kept in ``request_id_key_file``."""
    request_id_key_file: Path | None = None
    """Unset: ``request-id.key`` beside the spool directory."""

    @property
    def effective_request_id_key_file(self) -> Path:
        return self.request_id_key_file or self.spool_dir.parent / "request-id.key"


class StreamSettings(Section):
    """The stream workers."""

    app_id: str = "tollgate-stream"
    data_dir: Path = Path("var/stream")
    price_catalog: Path | None = None
    """A price catalog file (Tollgate YAML or LiteLLM JSON); unset: the shipped one."""
    budgets_file: Path | None = None
    """YAML budget definitions, loaded at start (more arrive on the definitions topic)."""
    webhooks_file: Path | None = None
    """YAML list of webhook targets that alerts are delivered to."""
    dedupe_window_s: Seconds = 3600
    """How long a usage event's id is remembered to drop redeliveries of it. Also, after
    the broker lost its history, how far back (by ``end_time``) the meter and the sink
    recognise an event the lake holds when it comes again: a gateway must not resend an
    event that ended longer ago than this."""
    anomaly_bucket_s: Annotated[int, Field(gt=0)] = 60
    """Cost anomalies are watched on spend per bucket of this many seconds."""
    anomaly_warmup_buckets: Annotated[int, Field(ge=0)] = 30
    """Buckets a subject learns from before it can be anomalous."""
    anomaly_min_impact_usd: Annotated[Decimal, Field(ge=0)] = Decimal("1.00")
    """Spend above expectation, in one bucket, needed to raise an anomaly alert."""
    anomaly_cooldown_s: Annotated[float, Field(ge=0)] = 1800
    """After an alert, the same subject and kind stay quiet this long: one incident, one alert."""
    quality_bucket_s: Annotated[int, Field(gt=0)] = 300
    """Quality regressions are judged on the share of bad answers per bucket of this many
    seconds (``stream.quality``); they share ``anomaly_cooldown_s``."""
    quality_warmup_buckets: Annotated[int, Field(ge=0)] = 6
    """Judged buckets a model or backend learns from before its share can alert."""
    quality_min_evaluations: Annotated[int, Field(ge=1)] = 20
    """Labelled evaluations a bucket needs to be judged."""
    quality_min_rise: Annotated[float, Field(gt=0, le=1)] = 0.15
    """The rise of the bad share over its baseline that raises an alert (0.15: 15 points)."""
    web_port: Port = 6066

    def group_id(self, topic_prefix: str, stage: str | None = None) -> str:
        """The consumer group of a stage ("meter", "budgets"); None: the Faust app's own."""
        return f"{topic_prefix}{self.app_id}" + (f"-{stage}" if stage else "")


class LakeSettings(Section):
    """The Parquet lake, and the sink that writes it."""

    path: Path = Path("var/lake")
    sink_group_id: str = "tollgate-sink"
    """The sink's consumer group (after the topic prefix). Its committed offsets only show
    lag: where to resume is read from the lake's file names."""
    sink_roll_rows: Annotated[int, Field(ge=1)] = 100_000
    """A topic partition's buffer becomes a file at this many rows..."""
    sink_roll_s: Seconds = 5.0
    """...or this long after its first record, so a call is queryable within ~2x this."""
    sink_dedupe_offsets: Annotated[int, Field(ge=0)] = 100_000
    """How far back (in offsets of its partition) a second copy of an event is recognised
    and dropped by the sink; compaction drops any copy left. 0: the sink keeps copies."""
    sink_metrics_port: Port = 0
    """Where the sink serves Prometheus ``/metrics``; 0: not served."""


class ReportingSettings(Section):
    """The reporting API and dashboard."""

    host: str = "127.0.0.1"
    port: Port = 8090
    admin_key: SecretStr | None = None
    """A key that sees every tenant's rows (``Authorization: Bearer <key>``)."""
    keys_file: Path | None = None
    """YAML list of reporting keys, stored as SHA-256 hashes, each bound to one tenant
    (or marked ``admin: true``); see ``analytics.reporting.auth``."""
    catalogs_dir: Path | None = None
    """Price catalogs (``NAME.yaml``, ``NAME.yml`` or ``NAME.json``) that ``/v1/spend``
    can price the lake's calls under (``catalog=NAME``); read at start."""


class LogSettings(Section):
    """What every process logs, and how."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """``debug`` adds one line per gateway call (ids, model, status, tokens; no content)."""
    format: Literal["json", "text"] = "json"


class Settings(Section):
    """Everything a Tollgate process is configured by."""

    kafka: KafkaSettings = KafkaSettings()
    gateway: GatewaySettings = GatewaySettings()
    stream: StreamSettings = StreamSettings()
    lake: LakeSettings = LakeSettings()
    reporting: ReportingSettings = ReportingSettings()
    log: LogSettings = LogSettings()


SECTIONS: dict[str, type[Section]] = {
    name: info.annotation  # type: ignore[misc]
    for name, info in Settings.model_fields.items()
}


def env_var_name(section: str, field: str) -> str:
    return f"{ENV_PREFIX}{section}_{field}".upper()


def known_env_vars() -> set[str]:
    """Every environment variable the settings read."""
    names = {CONFIG_ENV, BOOTSTRAP_ENV}
    for section, model in SECTIONS.items():
        names |= {env_var_name(section, field) for field in model.model_fields}
    return names


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: Path | None = None
) -> Settings:
    """Build the settings from a YAML file and the environment, or fail naming the culprit."""
    environ = os.environ if environ is None else environ
    path = config_file or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    merged: dict[str, dict[str, Any]] = _read_yaml(path) if path else {}
    origins: dict[tuple[str, str], str] = {
        (section, field): f"{path}: {section}.{field}"
        for section, fields in merged.items()
        for field in fields
    }
    for (section, field), value in _read_env(environ).items():
        merged.setdefault(section, {})[field] = value
        origins[(section, field)] = env_var_name(section, field)
    if environ.get(BOOTSTRAP_ENV):
        merged.setdefault("kafka", {})["bootstrap_servers"] = environ[BOOTSTRAP_ENV]
        origins[("kafka", "bootstrap_servers")] = BOOTSTRAP_ENV
    try:
        return Settings.model_validate(merged)
    except ValidationError as error:
        raise SettingsError(_describe(error, origins)) from None


def _read_yaml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(content, dict):
        raise SettingsError(f"config file {path} must hold a mapping of sections")
    for section, fields in content.items():
        if section not in SECTIONS:
            raise SettingsError(
                f"{path}: unknown section {section!r}{_suggest(section, SECTIONS)}; "
                f"sections are {', '.join(SECTIONS)}"
            )
        if not isinstance(fields, dict):
            raise SettingsError(f"{path}: section {section!r} must be a mapping")
    return content


def _read_env(environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    values: dict[tuple[str, str], str] = {}
    known = known_env_vars()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if name not in known:
            raise SettingsError(f"{name} is not a Tollgate setting{_suggest(name, known)}")
        section, _, field = name[len(ENV_PREFIX) :].lower().partition("_")
        values[(section, field)] = value
    return values


def _suggest(name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(error: ValidationError, origins: dict[tuple[str, str], str]) -> str:
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        where = ".".join(loc) or "settings"
        if len(loc) >= 2:
            where = origins.get((loc[0], loc[1]), where)
        value = problem.get("input")
        secret = any(word in where.lower() for word in ("password", "key"))
        shown = "" if secret or isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"{where}: {problem['msg']}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)
