"""Settings: defaults that run on one machine, YAML then environment, and fast failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.errors import SettingsError
from tollgate.settings import known_env_vars, load_settings


def test_defaults_run_on_one_machine_with_the_embedded_broker() -> None:
    settings = load_settings({})
    assert settings.kafka.embedded
    assert settings.kafka.effective_session_timeout_s == 3.0
    assert settings.kafka.effective_idempotence is False
    assert settings.gateway.host == "127.0.0.1"


def test_kafka_bootstrap_servers_selects_a_real_cluster_with_production_defaults() -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092"})
    assert not settings.kafka.embedded
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka.effective_session_timeout_s == 30.0
    assert settings.kafka.effective_idempotence is True


def test_environment_variables_fill_nested_sections_with_typed_values() -> None:
    settings = load_settings(
        {
            "TOLLGATE_GATEWAY_PORT": "9000",
            "TOLLGATE_GATEWAY_BUDGET_FAIL_OPEN": "false",
            "TOLLGATE_KAFKA_TOPIC_PREFIX": "staging.",
            "TOLLGATE_LAKE_PATH": "/data/lake",
        }
    )
    assert settings.gateway.port == 9000
    assert settings.gateway.budget_fail_open is False
    assert settings.kafka.topics().usage == "staging.tollgate.usage.v1"
    assert settings.lake.path == Path("/data/lake")


def test_the_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.yaml"
    config.write_text("gateway:\n  port: 7000\n  host: 0.0.0.0\nkafka:\n  partitions: 12\n")
    settings = load_settings({"TOLLGATE_CONFIG": str(config), "TOLLGATE_GATEWAY_PORT": "7001"})
    assert settings.gateway.port == 7001
    assert settings.gateway.host == "0.0.0.0"
    assert settings.kafka.partitions == 12


def test_a_malformed_value_names_the_variable_and_what_was_wrong() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"TOLLGATE_GATEWAY_PORT": "eighty"})
    message = str(raised.value)
    assert "TOLLGATE_GATEWAY_PORT" in message
    assert "valid integer" in message
    assert "'eighty'" in message


def test_an_out_of_range_value_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"TOLLGATE_GATEWAY_PORT.*less than or equal to 65535"):
        load_settings({"TOLLGATE_GATEWAY_PORT": "70000"})


def test_a_misspelled_variable_fails_fast_with_a_suggestion() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"TOLLGATE_GATEWAY_PROT": "9000"})
    assert "TOLLGATE_GATEWAY_PROT is not a Tollgate setting" in str(raised.value)
    assert "did you mean TOLLGATE_GATEWAY_PORT" in str(raised.value)


def test_an_unknown_key_in_the_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.yaml"
    config.write_text("gateway:\n  prot: 9000\n")
    with pytest.raises(SettingsError) as raised:
        load_settings({}, config_file=config)
    assert f"{config}: gateway.prot" in str(raised.value)
    assert "Extra inputs are not permitted" in str(raised.value)


def test_an_unknown_section_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.yaml"
    config.write_text("gatway:\n  port: 9000\n")
    with pytest.raises(SettingsError, match=r"unknown section 'gatway'.*did you mean gateway"):
        load_settings({}, config_file=config)


def test_a_missing_or_broken_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings({"TOLLGATE_CONFIG": str(tmp_path / "absent.yaml")})
    broken = tmp_path / "broken.yaml"
    broken.write_text("gateway: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings({}, config_file=broken)


def test_contradicting_settings_are_refused_at_start() -> None:
    with pytest.raises(SettingsError, match="sasl_mechanism is set but"):
        load_settings({"TOLLGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})


def test_secrets_are_never_echoed_in_errors_or_reprs() -> None:
    settings = load_settings(
        {
            "TOLLGATE_KAFKA_SASL_MECHANISM": "PLAIN",
            "TOLLGATE_KAFKA_SASL_USERNAME": "svc",
            "TOLLGATE_KAFKA_SASL_PASSWORD": "hunter2-very-secret",
            "TOLLGATE_REPORTING_ADMIN_KEY": "admin-secret-key",
        }
    )
    assert "hunter2" not in repr(settings)
    assert "admin-secret-key" not in repr(settings)
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "hunter2-very-secret"


def test_variables_of_other_programs_are_ignored() -> None:
    settings = load_settings({"PATH": "/usr/bin", "KAFKA_HEAP_OPTS": "-Xmx1g"})
    assert settings.kafka.embedded


def test_every_known_variable_maps_to_a_setting() -> None:
    names = known_env_vars()
    assert "TOLLGATE_GATEWAY_PORT" in names
    assert "KAFKA_BOOTSTRAP_SERVERS" in names
    assert all(name.isupper() for name in names)


def test_forward_headers_are_read_comma_separated_and_never_name_a_credential() -> None:
    settings = load_settings({"TOLLGATE_GATEWAY_FORWARD_HEADERS": "x-team-trace, X-Experiment"})
    assert settings.gateway.forward_headers == ("x-team-trace", "X-Experiment")
    with pytest.raises(SettingsError, match="may not name authorization, cookie"):
        load_settings({"TOLLGATE_GATEWAY_FORWARD_HEADERS": "Authorization,x-a,Cookie"})
