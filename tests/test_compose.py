"""compose.yaml and the Dockerfile hold together, checked without Docker.

Docker cannot run here, so these tests read the files as data: the services exist, Kafka
runs KRaft, every Tollgate service is the one image running a real ``tollgate`` command,
and every environment variable handed to it is a setting Tollgate knows (an unknown
``TOLLGATE_`` variable would stop the service at start-up).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.routes import load_routes
from tollgate.cli import cli
from tollgate.settings import known_env_vars

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"

TOLLGATE_SERVICES = ("gateway", "worker", "sink", "reporting")
HTTP_SERVICES = {"gateway": "TOLLGATE_GATEWAY_PORT", "reporting": "TOLLGATE_REPORTING_PORT"}
LAKE_MOUNT = "/var/lib/tollgate/lake"


def _load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _tollgate_service_names() -> list[str]:
    """Every service but Kafka runs the Tollgate image."""
    return sorted(name for name in _load_compose()["services"] if name != "kafka")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return _load_compose()["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment, from list form (``- KEY=value``) or mapping form."""
    environment = service.get("environment") or {}
    if isinstance(environment, dict):
        return {key: None if value is None else str(value) for key, value in environment.items()}
    pairs = (entry.partition("=") for entry in environment)
    return {key: value if sep else None for key, sep, value in pairs}


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port → host port, from short (``[ip:]host:container``) or long syntax."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports[int(entry["target"])] = int(entry.get("published", entry["target"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        ports[int(parts[-1])] = int(parts[-2]) if len(parts) > 1 else int(parts[-1])
    return ports


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → volume name or host path, from short or long syntax."""
    found: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found[entry["target"]] = entry["source"]
        else:
            source, target = str(entry).split(":")[:2]
            found[target] = source
    return found


def first_word(command: str | list[str]) -> str:
    return (shlex.split(command) if isinstance(command, str) else command)[0]


def dockerfile_instruction(name: str) -> str:
    """The argument of the last ``name`` instruction (the one that takes effect)."""
    found = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert found, f"the Dockerfile has no {name}"
    return found[-1].strip()


def test_compose_defines_kafka_and_every_tollgate_service(services):
    assert {"kafka", *TOLLGATE_SERVICES} <= set(services)


def test_kafka_is_the_official_apache_image_with_a_pinned_tag(services):
    image, _, tag = services["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert re.fullmatch(r"(3\.9|4\.\d+)\.\d+", tag), f"pin a 3.9.x or 4.x tag, not {tag!r}"


def test_kafka_runs_kraft_as_one_combined_broker_and_controller(services):
    environment = environment_of(services["kafka"])
    roles = {role.strip() for role in (environment.get("KAFKA_PROCESS_ROLES") or "").split(",")}
    assert roles == {"broker", "controller"}
    assert environment.get("KAFKA_CONTROLLER_QUORUM_VOTERS")


def test_kafka_has_a_healthcheck(services):
    assert services["kafka"]["healthcheck"]["test"]


def test_the_dockerfile_exists():
    assert DOCKERFILE.is_file()


@pytest.mark.parametrize("name", _tollgate_service_names())
def test_every_tollgate_service_builds_from_the_repo_dockerfile(services, name):
    build = services[name].get("build")
    context = build.get("context") if isinstance(build, dict) else build
    assert context == ".", f"{name} must build from the repo's Dockerfile"


@pytest.mark.parametrize("name", _tollgate_service_names())
def test_every_tollgate_service_has_a_command(services, name):
    assert services[name].get("command"), f"{name} has no command"


@pytest.mark.parametrize("name", _tollgate_service_names())
def test_every_tollgate_service_waits_for_kafka_to_be_healthy(services, name):
    depends_on = services[name].get("depends_on") or {}
    assert isinstance(depends_on, dict), f"{name}: list-form depends_on cannot wait for health"
    assert depends_on.get("kafka", {}).get("condition") == "service_healthy", name


def _credential_vars() -> set[str]:
    """Backend credentials: the variables the shipped routes file names."""
    routes = load_routes(REPO / "deploy" / "routes.yaml")
    return {backend.api_key_env for backend in routes.backends if backend.api_key_env}


def test_every_variable_compose_passes_is_a_known_setting_or_a_named_credential(services):
    known = known_env_vars() | _credential_vars()
    unknown = sorted(
        f"{name}: {key}"
        for name in _tollgate_service_names()
        for key in environment_of(services[name])
        if key not in known
    )
    assert not unknown, f"not Tollgate settings: {', '.join(unknown)}"


@pytest.mark.parametrize(("name", "port_setting"), sorted(HTTP_SERVICES.items()))
def test_published_port_is_the_port_the_service_listens_on(services, name, port_setting):
    listen_port = int(environment_of(services[name])[port_setting] or 0)
    assert listen_port in published_ports(services[name]), (
        f"{name} listens on {listen_port} ({port_setting}) but publishes "
        f"{sorted(published_ports(services[name]))}"
    )


@pytest.mark.parametrize(("name", "port_setting"), sorted(HTTP_SERVICES.items()))
def test_http_services_are_health_checked_on_healthz(services, name, port_setting):
    listen_port = environment_of(services[name])[port_setting]
    probe = " ".join(map(str, services[name]["healthcheck"]["test"]))
    assert f":{listen_port}/healthz" in probe


@pytest.mark.parametrize("name", ["sink", "reporting"])
def test_the_lake_is_a_named_volume_the_sink_and_reporting_share(services, name):
    assert environment_of(services[name])["TOLLGATE_LAKE_PATH"] == LAKE_MOUNT
    assert mounts(services[name]).get(LAKE_MOUNT) == "lake"
    assert "lake" in _load_compose()["volumes"]


def test_the_gateway_gets_every_credential_its_routes_file_names(services):
    missing = _credential_vars() - set(environment_of(services["gateway"]))
    assert not missing, f"the gateway would not start without {sorted(missing)}"


def test_the_mounted_routes_file_is_the_one_the_gateway_reads(services):
    gateway = services["gateway"]
    routes_path = environment_of(gateway)["TOLLGATE_GATEWAY_ROUTES_FILE"]
    assert routes_path in mounts(gateway)
    assert "deploy/routes.yaml" in mounts(gateway)[routes_path]


def test_no_secret_is_written_into_compose():
    compose = COMPOSE_FILE.read_text()
    secrets = re.findall(r"^\s*(\w*(?:KEY|PASSWORD)\w*):\s*(\S+)", compose, flags=re.MULTILINE)
    literal = [name for name, value in secrets if not value.startswith("${")]
    assert not literal, f"take these from the operator's environment: {literal}"


def test_the_image_entrypoint_is_tollgate():
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["tollgate"]


def test_the_image_runs_as_a_non_root_user():
    assert dockerfile_instruction("USER") not in {"root", "0"}


@pytest.mark.parametrize("name", _tollgate_service_names())
def test_every_service_command_is_a_tollgate_cli_command(services, name):
    command = first_word(services[name]["command"])
    assert command in cli.commands, f"{name}: `tollgate {command}` does not exist"
