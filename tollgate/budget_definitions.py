"""Budget definitions: read from a YAML file, and indexed for matching usage to subjects.

The file holds a list under ``budgets:``::

    budgets:
      - id: acme-tpm                      # or budget_id
        scope: {tenant: acme}
        window: {rolling: 60}             # seconds, or "90s", "15m", "24h", "7d"
        limit_tokens: 100000
      - id: acme-teams-monthly
        scope: {tenant: acme, team: "*"}  # "*": one budget per team
        window: {calendar: month, timezone: Europe/Berlin}   # day, week or month
        limit_usd: "250.00"               # a string keeps every digit; a number works too
        action: alert                     # block (default) or alert
        thresholds_pct: [50, 80, 100]     # the default
        description: Each team's monthly spend

Scope dimensions are ``tenant``, ``team``, ``api_key_id`` (or ``key``), ``user``,
``request_model`` (or ``model``) and ``provider``. A mistake stops start-up with a
``SettingsError`` naming the budget and the field.

Definitions also arrive one by one on the compacted definitions topic (a ``deleted``
one retires its budget); ``BudgetIndex.apply_definition`` takes both.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, cast

import msgspec
import yaml

from tollgate.contract import (
    EACH,
    BudgetDefinition,
    Dimension,
    UsageEvent,
    WindowKind,
    state_key,
    subject_key,
)
from tollgate.errors import ContractError, SettingsError

DIMENSION_NAMES: dict[str, Dimension] = {d.value: d for d in Dimension} | {
    "key": Dimension.API_KEY,
    "model": Dimension.MODEL,
}
"""Scope keys accepted in the YAML file: the contract's names and two short aliases."""

_FIELDS = (
    "id",
    "budget_id",
    "scope",
    "window",
    "limit_tokens",
    "limit_usd",
    "action",
    "thresholds_pct",
    "description",
)
_SECONDS_PER = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


class _Invalid(Exception):
    """A field of one budget is wrong; ``load_budgets`` names the file and budget."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message


def load_budgets(path: Path) -> list[BudgetDefinition]:
    """Read the budgets of a YAML file, or raise ``SettingsError`` naming what is wrong."""
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SettingsError(f"cannot read budgets file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"budgets file {path} is not valid YAML: {error}") from None
    if content is None:
        return []
    if not isinstance(content, Mapping) or set(content) - {"budgets"}:
        raise SettingsError(f"budgets file {path} must hold one key, `budgets`, with a list")
    entries = content.get("budgets") or []
    if not isinstance(entries, list):
        raise SettingsError(f"budgets file {path}: `budgets` must be a list")
    definitions: list[BudgetDefinition] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        name = _name_of(entry, position)
        try:
            definition = _parse_budget(entry)
        except _Invalid as error:
            raise SettingsError(
                f"budgets file {path}: budget {name}: `{error.field}` {error.message}"
            ) from None
        if definition.budget_id in seen:
            raise SettingsError(
                f"budgets file {path}: budget {name}: `id` is used by an earlier budget"
            )
        seen.add(definition.budget_id)
        definitions.append(definition)
    return definitions


def _parse_budget(entry: object) -> BudgetDefinition:
    """One budget from its YAML form (see the module docstring)."""
    if not isinstance(entry, Mapping):
        raise _Invalid("budget", "must be a mapping of fields")
    for field in entry:
        if field not in _FIELDS:
            close = difflib.get_close_matches(str(field), _FIELDS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise _Invalid(str(field), f"is not a budget field{hint}")
    if "id" in entry and "budget_id" in entry:
        raise _Invalid("id", "is given twice (as `id` and `budget_id`)")
    budget_id = entry.get("id", entry.get("budget_id"))
    if budget_id is None:
        raise _Invalid("id", "is missing")
    fields: dict[str, Any] = {
        "budget_id": budget_id,
        "scope": _scope(entry.get("scope")),
        "window": _window(entry.get("window")),
    }
    if entry.get("limit_tokens") is not None:
        fields["limit_tokens"] = _integer("limit_tokens", entry["limit_tokens"])
    if entry.get("limit_usd") is not None:
        fields["limit_usd"] = _usd("limit_usd", entry["limit_usd"])
    for field in ("action", "thresholds_pct", "description"):
        if entry.get(field) is not None:
            fields[field] = entry[field]
    try:
        return msgspec.convert(fields, BudgetDefinition)
    except msgspec.ValidationError as error:
        if isinstance(error.__cause__, ContractError):
            raise _Invalid(_yaml_name(error.__cause__.field), _reason(error.__cause__)) from None
        message = str(error)
        match = _AT_PATH.search(message)
        field = _yaml_name(match.group("path") if match else None)
        raise _Invalid(field, message[: match.start()] if match else message) from None


def _name_of(entry: object, position: int) -> str:
    if isinstance(entry, Mapping):
        name = entry.get("id", entry.get("budget_id"))
        if isinstance(name, str) and name:
            return repr(name)
    return f"#{position}"


def _yaml_name(path: str | None) -> str:
    """The YAML spelling of a field path msgspec reports (``window.size_s`` → ``window``)."""
    if not path:
        return "budget"
    head = path.split(".")[0].split("[")[0]
    return "id" if head == "budget_id" else head


def _reason(error: ContractError) -> str:
    return str(error).split(": ", 1)[-1]


def _scope(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise _Invalid("scope", "must map dimensions to values, e.g. {tenant: acme, team: '*'}")
    scope: dict[str, str] = {}
    for name, value in raw.items():
        dimension = DIMENSION_NAMES.get(str(name))
        if dimension is None:
            known = ", ".join(DIMENSION_NAMES)
            raise _Invalid("scope", f"names an unknown dimension {name!r} (known: {known})")
        if dimension.value in scope:
            raise _Invalid("scope", f"names {dimension.value} twice")
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise _Invalid("scope", f"{name}: must be a value or '{EACH}', got {value!r}")
        scope[dimension.value] = str(value)
    return scope


def _window(raw: object) -> dict[str, Any]:
    usage = "must be {rolling: <duration>} or {calendar: day|week|month, timezone: <zone>}"
    if not isinstance(raw, Mapping):
        raise _Invalid("window", usage)
    kinds = [kind for kind in WindowKind if kind.value in raw]
    if len(kinds) != 1:
        raise _Invalid("window", usage)
    kind = kinds[0]
    extra = set(raw) - {kind.value, "timezone"}
    if extra:
        raise _Invalid("window", f"has unknown keys {sorted(map(str, extra))}; it {usage}")
    if kind is WindowKind.ROLLING:
        if "timezone" in raw:
            raise _Invalid("window", "takes a timezone only for a calendar window")
        return {"kind": kind.value, "size_s": _duration_s(raw[kind.value])}
    unit = raw[kind.value]
    if unit not in ("day", "week", "month"):
        raise _Invalid("window", f"calendar must be day, week or month, got {unit!r}")
    timezone = raw.get("timezone", "UTC")
    if not isinstance(timezone, str):
        raise _Invalid("window", f"timezone must be an IANA name, got {timezone!r}")
    return {"kind": kind.value, "unit": unit, "timezone": timezone}


def _duration_s(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        seconds = raw
    else:
        match = _DURATION.match(raw) if isinstance(raw, str) else None
        if match is None:
            raise _Invalid(
                "window", f"rolling must be seconds or like 90s, 15m, 24h, 7d; got {raw!r}"
            )
        seconds = int(match.group(1)) * _SECONDS_PER[match.group(2)]
    if seconds <= 0:
        raise _Invalid("window", f"rolling must be longer than zero, got {raw!r}")
    return seconds


def _integer(field: str, raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _Invalid(field, f"must be a whole number, got {raw!r}")
    return raw


def _usd(field: str, raw: object) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _Invalid(field, f"must be an amount in USD, got {raw!r}")
    try:
        amount = Decimal(str(raw).strip())
    except InvalidOperation:
        raise _Invalid(field, f"must be an amount in USD, got {raw!r}") from None
    if not amount.is_finite():
        raise _Invalid(field, f"must be a finite amount, got {raw!r}")
    return amount


Shape = tuple[Dimension, ...]
"""The dimensions a scope names, in subject order."""
_Budgets = dict[str, BudgetDefinition]
_FIELD_OF = tuple((dimension, dimension.value) for dimension in Dimension)
"""Each dimension and the usage-event field that holds it (``Enum.value`` is slow)."""


class SubjectMatch(NamedTuple):
    """A budget an event counts toward, and the subject it counts for."""

    definition: BudgetDefinition
    scope: dict[Dimension, str]
    state_key: str

    @property
    def subject(self) -> str:
        return self.state_key.split("|", 1)[1]


class BudgetIndex:
    """The live budget definitions, indexed so that matching an event costs little.

    Definitions are grouped by their *shape* (the dimensions their scope names) and by
    which of those dimensions they pin to a value. Matching an event is one dictionary
    lookup per group, whatever the number of definitions: a group is keyed by the pinned
    values, and ``"*"`` dimensions take the event's value as the subject's.
    """

    def __init__(self, definitions: Iterable[BudgetDefinition] = ()) -> None:
        self.version = 0
        """Bumped on every change, so callers can cache matches."""
        self._definitions: dict[str, BudgetDefinition] = {}
        self._groups: dict[tuple[Shape, Shape], dict[tuple[str, ...], _Budgets]] = {}
        for definition in definitions:
            self.apply_definition(definition)

    def __len__(self) -> int:
        return len(self._definitions)

    def __iter__(self) -> Iterator[BudgetDefinition]:
        return iter(list(self._definitions.values()))

    def __contains__(self, budget_id: object) -> bool:
        return budget_id in self._definitions

    def get(self, budget_id: str) -> BudgetDefinition | None:
        return self._definitions.get(budget_id)

    def apply_definition(self, definition: BudgetDefinition) -> None:
        """Add or replace a budget; one with ``deleted=True`` removes it."""
        self.remove(definition.budget_id)
        if definition.deleted:
            return
        self._definitions[definition.budget_id] = definition
        self.version += 1
        shape, pinned, pins = _index_key(definition)
        by_pins = self._groups.setdefault((shape, pinned), {})
        by_pins.setdefault(pins, {})[definition.budget_id] = definition

    def remove(self, budget_id: str) -> BudgetDefinition | None:
        """Forget a budget; returns its definition, if it was known."""
        definition = self._definitions.pop(budget_id, None)
        if definition is None:
            return None
        self.version += 1
        shape, pinned, pins = _index_key(definition)
        by_pins = self._groups[(shape, pinned)]
        budgets = by_pins[pins]
        del budgets[budget_id]
        if not budgets:
            del by_pins[pins]
            if not by_pins:
                del self._groups[(shape, pinned)]
        return definition

    def subjects(self, event: UsageEvent | Mapping[Dimension, str | None]) -> list[SubjectMatch]:
        """Every (definition, subject scope, state key) ``event`` counts toward.

        An event that lacks a dimension a scope names (no ``user``, say) does not count
        toward that budget.
        """
        if isinstance(event, Mapping):
            values: dict[Dimension, str | None] = {d: event.get(d) for d, _ in _FIELD_OF}
        else:
            values = {d: getattr(event, field) for d, field in _FIELD_OF}
        matches: list[SubjectMatch] = []
        for (shape, pinned), by_pins in self._groups.items():
            # A missing pinned value is None, which no key holds.
            budgets = by_pins.get(cast(tuple[str, ...], tuple(values[d] for d in pinned)))
            if not budgets:
                continue
            subject_values = tuple(values[d] for d in shape)
            if None in subject_values:
                continue
            present = cast(tuple[str, ...], subject_values)
            subject = _subject(shape, present)
            for definition in budgets.values():
                scope = dict(zip(shape, present, strict=True))
                key = state_key(definition.budget_id, subject)
                matches.append(SubjectMatch(definition, scope, key))
        return matches


def _index_key(definition: BudgetDefinition) -> tuple[Shape, Shape, tuple[str, ...]]:
    order = list(Dimension)
    shape = tuple(sorted(definition.scope, key=order.index))
    pinned = tuple(d for d in shape if definition.scope[d] != EACH)
    return shape, pinned, tuple(definition.scope[d] for d in pinned)


@lru_cache(maxsize=65_536)
def _subject(shape: Shape, values: tuple[str, ...]) -> str:
    return subject_key(dict(zip(shape, values, strict=True)))
