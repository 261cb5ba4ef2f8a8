"""The fake provider's run-time state: current config, failure schedule, ids and stats.

One ``ProviderState`` lives on the application. It is touched only from the server's event
loop, except ``config`` assignments from a test thread, which are a single reference swap.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from typing import Any

from multidict import CIMultiDictProxy

from tollgate.fake_provider.behaviour import CallBehaviour
from tollgate.fake_provider.config import FakeProviderConfig

_SECRET_HEADERS = ("authorization", "x-api-key")


class RequestStats:
    """What arrived: requests per path, and the last request's headers and body.

    Credentials are kept verbatim on purpose: this is a test server, and tests assert which
    upstream key a gateway sent.
    """

    def __init__(self) -> None:
        self.requests_by_path: Counter[str] = Counter()
        self.aborted = 0
        """Requests whose caller went away before the answer was written whole."""
        self.last_path: str | None = None
        self.last_headers: CIMultiDictProxy[str] | None = None
        self.last_body: Any = None

    def record(self, path: str, headers: CIMultiDictProxy[str], body: Any) -> None:
        self.requests_by_path[path] += 1
        self.last_path = path
        self.last_headers = headers
        self.last_body = body

    def as_json(self) -> dict[str, Any]:
        headers = self.last_headers or {}
        return {
            "total": sum(self.requests_by_path.values()),
            "aborted": self.aborted,
            "requests_by_path": dict(self.requests_by_path),
            "last_request": {
                "path": self.last_path,
                "headers": {name.lower(): value for name, value in headers.items()},
                "body": self.last_body,
                **{name.replace("-", "_"): headers.get(name) for name in _SECRET_HEADERS},
            },
        }


class ProviderState:
    """Config, stats and the deterministic failure schedule of one fake provider."""

    def __init__(self, config: FakeProviderConfig) -> None:
        self.initial_config = config
        self.stats = RequestStats()
        self._run_id = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self.config = config

    @property
    def config(self) -> FakeProviderConfig:
        return self._config

    @config.setter
    def config(self, config: FakeProviderConfig) -> None:
        self._config = config
        self._eligible_calls = 0
        self.steady_behaviour = CallBehaviour.from_config(config, failing=False)
        self.failing_behaviour = CallBehaviour.from_config(config, failing=True)

    def reset(self) -> None:
        """Back to the config the provider started with, and empty stats."""
        self.stats = RequestStats()
        self.config = self.initial_config

    def next_behaviour(self) -> CallBehaviour:
        """The config's behaviour for the next call, failing on an even schedule.

        With ``fail_rate`` r, call k fails when ``floor(k * r)`` steps up: 0.5 fails every
        2nd call, 0.25 every 4th, 1.0 every call.
        """
        if self._config.fail_status is None:
            return self.steady_behaviour
        self._eligible_calls += 1
        k, rate = self._eligible_calls, self._config.fail_rate
        if int(k * rate + 1e-9) > int((k - 1) * rate + 1e-9):
            return self.failing_behaviour
        return self.steady_behaviour

    def next_id(self, prefix: str) -> str:
        """A unique id with the provider's own ``prefix``, e.g. ``chatcmpl-...``."""
        return f"{prefix}{self._run_id}{next(self._ids):08x}"
