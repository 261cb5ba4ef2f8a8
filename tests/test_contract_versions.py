"""Schema versions: written on every record, required on read, unknown ones refused."""

from __future__ import annotations

import json

import pytest

from tests.factories import make_budget, make_priced, make_usage
from tollgate.contract import BudgetDefinition, BudgetState, PricedEvent, UsageEvent, decode, encode
from tollgate.errors import ContractError, UnsupportedSchemaVersion


def with_version(record: object, version: object) -> bytes:
    payload = json.loads(encode(record))  # type: ignore[arg-type]
    if version is ...:
        del payload["schema_version"]
    else:
        payload["schema_version"] = version
    return json.dumps(payload).encode()


@pytest.mark.parametrize("version", [0, 3, 99])
def test_a_record_from_an_unknown_version_is_refused_as_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedSchemaVersion) as raised:
        decode(with_version(make_usage(), version), UsageEvent)
    assert raised.value.field == "schema_version"
    assert f"schema_version {version} is not supported" in str(raised.value)
    assert "reads version 1, 2" in str(raised.value)


@pytest.mark.parametrize("version", [..., None, "1", 1.5, True])
def test_a_missing_or_non_integer_version_is_refused(version: object) -> None:
    with pytest.raises(ContractError) as raised:
        decode(with_version(make_usage(), version), UsageEvent)
    assert raised.value.field == "schema_version"
    assert not isinstance(raised.value, UnsupportedSchemaVersion)


def test_the_version_is_checked_before_the_fields_so_a_newer_record_says_why() -> None:
    payload = json.loads(encode(make_budget()))
    payload.update(schema_version=3, new_field_from_the_future=True)
    with pytest.raises(UnsupportedSchemaVersion):
        decode(json.dumps(payload), BudgetDefinition)


def test_each_record_kind_reports_the_version_it_reads() -> None:
    assert UsageEvent.schema_version() == 2
    assert PricedEvent.schema_version() == 2
    assert BudgetState.schema_version() == 1


@pytest.mark.parametrize("kind", [UsageEvent, PricedEvent])
def test_a_version_1_record_without_token_budget_is_still_read(kind: type) -> None:
    record = make_priced() if kind is PricedEvent else make_usage()
    old = json.loads(with_version(record, 1))
    del old["token_budget"]
    read = decode(json.dumps(old), kind)
    assert isinstance(read, kind)
    assert read.token_budget is None
    assert read.input_tokens == record.input_tokens
    assert json.loads(encode(read))["schema_version"] == 1  # passed on as it was written


@pytest.mark.parametrize("kind", [UsageEvent, PricedEvent])
def test_a_version_1_record_claiming_a_token_budget_is_refused(kind: type) -> None:
    record = make_priced() if kind is PricedEvent else make_usage()
    old = json.loads(with_version(record, 1))
    old["token_budget"] = 500
    with pytest.raises(ContractError) as raised:
        decode(json.dumps(old), kind)
    assert raised.value.field == "token_budget"


def test_a_version_2_usage_event_carries_its_token_budget() -> None:
    event = make_usage(token_budget=4_000)
    assert decode(encode(event), UsageEvent).token_budget == 4_000


def test_a_usage_event_is_not_mistaken_for_a_priced_event() -> None:
    with pytest.raises(ContractError) as raised:
        decode(encode(make_usage()), PricedEvent)
    assert raised.value.field == "price_version"
