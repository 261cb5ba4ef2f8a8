"""Who calls which model, and when: the cast and the traffic shape of a synthetic lake.

Everything here is drawn once from one random generator, so a seed always builds the same
world: tenants of Zipf-like sizes, each with teams, users and API keys; a model mix that
differs by team; and a day that is busy in the afternoon (UTC) and quiet on weekends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

from tollgate.pricing.model_price import ANTHROPIC, AZURE_OPENAI, OPENAI

_TENANTS = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "aperture",
)
_TEAMS = (
    "search",
    "support-bot",
    "analytics",
    "platform",
    "growth",
    "research",
    "mobile",
    "billing",
)
_PEOPLE = (
    "ada",
    "grace",
    "alan",
    "edsger",
    "barbara",
    "donald",
    "margaret",
    "linus",
    "guido",
    "frances",
    "ken",
    "dennis",
    "radia",
    "john",
    "katherine",
    "tim",
)
_ENVIRONMENTS = ("prod", "staging", "dev")
FEATURES = ("chat", "summarize", "classify", "extract", "rag")
"""Values of the ``feature`` tag some calls carry."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model as clients call it, with the shape of its traffic."""

    provider: str
    request_model: str
    response_model: str
    operation: str
    backend: str
    weight: float
    """Relative popularity before the team's own taste is applied."""
    input_median: float
    output_median: float
    cache_share: float = 0.0
    """Share of calls that read from the prompt cache."""
    cache_write_share: float = 0.0
    """Share of calls that write to the prompt cache (Anthropic bills writes)."""
    reasoning: bool = False
    stream_share: float = 0.5
    ms_per_output_token: float = 12.0


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        OPENAI, "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "chat", "openai-primary",
        30, 900, 220, cache_share=0.3, stream_share=0.6, ms_per_output_token=8,
    ),
    ModelSpec(
        OPENAI, "gpt-4o", "gpt-4o-2024-08-06", "chat", "openai-primary",
        12, 1500, 350, cache_share=0.35, stream_share=0.6,
    ),
    ModelSpec(
        OPENAI, "gpt-4.1", "gpt-4.1-2025-04-14", "responses", "openai-primary",
        6, 2500, 450, cache_share=0.4, stream_share=0.5,
    ),
    ModelSpec(
        OPENAI, "gpt-4.1-mini", "gpt-4.1-mini-2025-04-14", "chat", "openai-primary",
        10, 1200, 260, cache_share=0.3, stream_share=0.5, ms_per_output_token=7,
    ),
    ModelSpec(
        OPENAI, "o4-mini", "o4-mini-2025-04-16", "responses", "openai-primary",
        4, 1800, 1400, cache_share=0.2, reasoning=True, stream_share=0.3,
        ms_per_output_token=6,
    ),
    ModelSpec(
        OPENAI, "o3", "o3-2025-04-16", "responses", "openai-primary",
        2, 3000, 2200, cache_share=0.2, reasoning=True, stream_share=0.3,
        ms_per_output_token=9,
    ),
    ModelSpec(
        OPENAI, "text-embedding-3-small", "text-embedding-3-small", "embeddings",
        "openai-primary", 9, 400, 0, stream_share=0.0, ms_per_output_token=0,
    ),
    ModelSpec(
        AZURE_OPENAI, "gpt-4o", "gpt-4o-2024-08-06", "chat", "azure-eastus",
        6, 1400, 320, cache_share=0.3, stream_share=0.6,
    ),
    ModelSpec(
        AZURE_OPENAI, "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "chat", "azure-westeurope",
        5, 800, 200, cache_share=0.3, stream_share=0.6, ms_per_output_token=8,
    ),
    ModelSpec(
        ANTHROPIC, "claude-sonnet-4", "claude-sonnet-4-20250514", "messages",
        "anthropic-primary", 10, 2200, 420, cache_share=0.45, cache_write_share=0.15,
        stream_share=0.7, ms_per_output_token=14,
    ),
    ModelSpec(
        ANTHROPIC, "claude-3-5-haiku", "claude-3-5-haiku-20241022", "messages",
        "anthropic-primary", 6, 1000, 250, cache_share=0.35, cache_write_share=0.1,
        stream_share=0.7, ms_per_output_token=7,
    ),
    ModelSpec(
        ANTHROPIC, "claude-opus-4", "claude-opus-4-20250514", "messages",
        "anthropic-primary", 1, 3500, 700, cache_share=0.45, cache_write_share=0.2,
        stream_share=0.7, ms_per_output_token=25,
    ),
)  # fmt: skip
BIG_MODELS = ("gpt-4o", "claude-opus-4", "o3")
"""What incidents burn money with."""

MAX_INPUT_TOKENS = 200_000
MAX_OUTPUT_TOKENS = 16_000


@dataclass(frozen=True, slots=True)
class World:
    """The cast, as parallel arrays indexed by key (the unit traffic is drawn by)."""

    tenants: tuple[str, ...]
    teams: tuple[str, ...]
    """Team names, indexed by the global team number; a name may repeat across tenants."""
    team_tenant: np.ndarray
    users: tuple[str, ...]
    keys: tuple[str, ...]
    key_team: np.ndarray
    key_tenant: np.ndarray
    key_env: np.ndarray
    """Index into ``ENVIRONMENTS``."""
    key_cumulative: np.ndarray
    """Cumulative traffic share of the regular keys, for inverse-CDF draws."""
    regular_keys: int
    """Keys with everyday traffic come first; after them, keys only incidents use."""
    key_user_start: np.ndarray
    key_user_count: np.ndarray
    team_model_cumulative: np.ndarray
    """Per team, the cumulative share of each model in ``MODELS``."""

    @property
    def environments(self) -> tuple[str, ...]:
        return _ENVIRONMENTS


def build_world(rng: np.random.Generator, tenants: int, new_keys: int = 0) -> World:
    """``tenants`` tenants with Zipf-like sizes, plus ``new_keys`` keys that get no regular
    traffic (incidents bring them in), appended last."""
    tenant_names = tuple(_name(_TENANTS, i) for i in range(tenants))
    tenant_share = _zipf(tenants, 1.1)
    teams: list[str] = []
    team_tenant: list[int] = []
    users: list[str] = []
    keys: list[str] = []
    key_team: list[int] = []
    key_share: list[float] = []
    key_user_start: list[int] = []
    key_user_count: list[int] = []
    used_key_ids: set[str] = set()
    for tenant in range(tenants):
        team_count = int(np.clip(round(6 * tenant_share[tenant] ** 0.3 * 1.6), 2, len(_TEAMS)))
        picked = rng.permutation(len(_TEAMS))[:team_count]
        team_share = _zipf(team_count, 0.9)
        for position, team_index in enumerate(picked):
            team = len(teams)
            teams.append(_TEAMS[team_index])
            team_tenant.append(tenant)
            people = int(rng.integers(2, 9))
            first_user = len(users)
            for person in rng.permutation(len(_PEOPLE))[:people]:
                users.append(f"{_PEOPLE[person]}@{tenant_names[tenant]}")
            key_count = int(rng.integers(1, 4))
            shares = _zipf(key_count, 1.0)
            for k in range(key_count):
                keys.append(_key_id(rng, used_key_ids))
                key_team.append(team)
                key_share.append(tenant_share[tenant] * team_share[position] * shares[k])
                # A key is used by a few of the team's people.
                count = int(rng.integers(1, people + 1))
                start = first_user + int(rng.integers(0, people - count + 1))
                key_user_start.append(start)
                key_user_count.append(count)
    for _ in range(new_keys):
        team = int(rng.integers(0, len(teams)))
        keys.append(_key_id(rng, used_key_ids))
        key_team.append(team)
        key_share.append(0.0)
        # Somebody on the team who already has a key starts using the new one.
        key_user_start.append(key_user_start[key_team.index(team)])
        key_user_count.append(1)
    share = np.asarray(key_share)
    regular = len(keys) - new_keys
    team_array = np.asarray(key_team, dtype=np.int64)
    return World(
        tenants=tenant_names,
        teams=tuple(teams),
        team_tenant=np.asarray(team_tenant, dtype=np.int64),
        users=tuple(users),
        keys=tuple(keys),
        key_team=team_array,
        key_tenant=np.asarray(team_tenant, dtype=np.int64)[team_array],
        key_env=rng.choice(len(_ENVIRONMENTS), size=len(keys), p=[0.75, 0.17, 0.08]),
        key_cumulative=np.cumsum(share[:regular]) / share[:regular].sum(),
        regular_keys=regular,
        key_user_start=np.asarray(key_user_start, dtype=np.int64),
        key_user_count=np.asarray(key_user_count, dtype=np.int64),
        team_model_cumulative=_team_models(rng, len(teams)),
    )


def hour_weights() -> np.ndarray:
    """Relative traffic in each UTC hour of a day: a night floor and an afternoon peak
    where European afternoons meet American mornings."""
    hours = np.arange(24) + 0.5
    return 0.15 + np.exp(-(((hours - 14.5) / 4.5) ** 2)) + 0.25 * np.exp(-(((hours - 9) / 2) ** 2))


def day_weight(day: date, rng: np.random.Generator) -> float:
    """Weekends are quiet; every day has a little noise of its own."""
    weekday = day.weekday()
    base = 0.42 if weekday == 5 else 0.36 if weekday == 6 else 1.0
    return base * float(rng.uniform(0.9, 1.1))


def model_index(request_model: str, provider: str | None = None) -> int:
    for index, spec in enumerate(MODELS):
        if spec.request_model == request_model and provider in (None, spec.provider):
            return index
    raise KeyError(request_model)


def _team_models(rng: np.random.Generator, teams: int) -> np.ndarray:
    """Each team leans on a few models: the base popularity times a per-team taste."""
    base = np.asarray([spec.weight for spec in MODELS])
    taste = rng.gamma(0.7, 1.0, size=(teams, len(MODELS)))
    weights = base * taste
    weights[:, [i for i, s in enumerate(MODELS) if s.request_model == "claude-opus-4"]] *= 0.3
    weights /= weights.sum(axis=1, keepdims=True)
    return np.cumsum(weights, axis=1)


def _zipf(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


def _name(names: tuple[str, ...], index: int) -> str:
    base = names[index % len(names)]
    return base if index < len(names) else f"{base}-{index // len(names) + 1}"


def _key_id(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        key = "key_" + "".join(f"{b:02x}" for b in rng.integers(0, 256, size=4))
        if key not in used:
            used.add(key)
            return key
