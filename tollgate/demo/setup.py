"""The demo's world: three tenants, their keys, routes to the fake provider, two budgets.

Everything is written under one directory (``var/demo`` by default) and handed to the
parts as settings, so the demo never touches the operator's own configuration. The keys
are fixed and printed: they are demo keys for a gateway on loopback, nothing else.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DemoKey:
    """A caller of the demo: its key and who it is."""

    key_id: str
    secret: str
    tenant: str
    team: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()


KEYS = (
    DemoKey("acme-search", "tg-demo-acme-search", "acme", "search"),
    DemoKey("acme-support", "tg-demo-acme-support", "acme", "support"),
    DemoKey("globex-research", "tg-demo-globex-research", "globex", "research"),
    DemoKey("initech-batch", "tg-demo-initech-batch", "initech", "batch"),
)
ADMIN_KEY = "tg-demo-admin"
"""The reporting API's admin key in the demo."""
EXHAUSTED_BUDGET = "acme-daily"
"""The budget the demo's traffic spends within its first minute."""

BUDGETS = {
    "budgets": [
        {
            "id": EXHAUSTED_BUDGET,
            "scope": {"tenant": "acme"},
            "window": {"calendar": "day", "timezone": "UTC"},
            "limit_usd": "1.00",
            "description": "Acme's daily spend: the demo's traffic spends it in under a minute.",
        },
        {
            "id": "globex-tpm",
            "scope": {"tenant": "globex"},
            "window": {"rolling": 60},
            "limit_tokens": 60000,
            "action": "alert",
            "description": "Globex tokens per minute, alert only.",
        },
        {
            "id": "team-daily",
            "scope": {"tenant": "*", "team": "*"},
            "window": {"calendar": "day", "timezone": "UTC"},
            "limit_usd": "25.00",
            "action": "alert",
            "description": "Every team's daily spend, alert only.",
        },
    ]
}


DEMO_ENTRIES = (
    "routes.yaml",
    "budgets.yaml",
    "spool",
    "spool-evaluations",
    "request-id.key",
    "stream",
    "lake",
    "logs",
)
"""What the demo writes in its directory: all that ``clear_demo`` removes."""


def clear_demo(directory: Path) -> None:
    """Remove what an earlier demo wrote in ``directory``, and nothing else."""
    for name in DEMO_ENTRIES:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def write_demo_config(directory: Path, provider_url: str) -> dict[str, str]:
    """Write the routes and budgets files; return the settings (environment) that use them."""
    directory.mkdir(parents=True, exist_ok=True)
    routes = {
        "backends": [
            {"name": "fake-openai", "kind": "openai", "base_url": provider_url, "timeout_s": 30},
            {
                "name": "fake-anthropic",
                "kind": "anthropic",
                "base_url": provider_url,
                "timeout_s": 30,
            },
        ],
        "models": {"gpt-*": ["fake-openai"], "claude-*": ["fake-anthropic"]},
        "auth": {
            "api_keys": [
                {
                    "id": key.key_id,
                    "key_sha256": key.sha256,
                    "tenant": key.tenant,
                    "team": key.team,
                    "rate_limit": {"calls": 6000, "renewal_period_s": 60},
                }
                for key in KEYS
            ]
        },
    }
    routes_file = directory / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(routes, sort_keys=False))
    budgets_file = directory / "budgets.yaml"
    budgets_file.write_text(yaml.safe_dump(BUDGETS, sort_keys=False))
    return {
        "TOLLGATE_GATEWAY_ROUTES_FILE": str(routes_file),
        "TOLLGATE_GATEWAY_SPOOL_DIR": str(directory / "spool"),
        "TOLLGATE_STREAM_BUDGETS_FILE": str(budgets_file),
        "TOLLGATE_STREAM_DATA_DIR": str(directory / "stream"),
        "TOLLGATE_LAKE_PATH": str(directory / "lake"),
        "TOLLGATE_REPORTING_ADMIN_KEY": ADMIN_KEY,
        # Anomalies in seconds, not hours: 5 s buckets, 30 s of learning.
        "TOLLGATE_STREAM_ANOMALY_BUCKET_S": "5",
        "TOLLGATE_STREAM_ANOMALY_WARMUP_BUCKETS": "6",
        "TOLLGATE_STREAM_ANOMALY_MIN_IMPACT_USD": "0.10",
        "TOLLGATE_STREAM_ANOMALY_COOLDOWN_S": "300",
        # Quality regressions likewise: 10 s buckets of at least 8 judged answers, 30 s of
        # learning, a rise of 20 points.
        "TOLLGATE_STREAM_QUALITY_BUCKET_S": "10",
        "TOLLGATE_STREAM_QUALITY_WARMUP_BUCKETS": "3",
        "TOLLGATE_STREAM_QUALITY_MIN_EVALUATIONS": "8",
        "TOLLGATE_STREAM_QUALITY_MIN_RISE": "0.2",
    }
