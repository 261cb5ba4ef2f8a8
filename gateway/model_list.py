"""Which models a caller may call, by name, for the models endpoints.

The rule a list follows:

- a model the routes file names exactly is listed under that name;
- a pattern (``"llama-*"``) is listed as the concrete names its backends serve that the
  pattern routes to them: the names a backend's ``models:`` list gives, or, when it gives
  none, the names the backend itself advertises at ``GET /v1/models`` (OpenAI, OpenAI-
  compatible and Anthropic kinds; asked at most every ``cache_s`` seconds, and a backend
  that does not answer contributes nothing until it does). Azure and Bedrock backends
  advertise nothing the gateway can route by, so patterns over them list their
  ``models:`` only;
- of those, only the names the caller's key may use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.principal import Principal
from gateway.routes import BackendConfig, BackendKind, RoutesConfig
from gateway.upstream import upstream_headers

log = logging.getLogger("tollgate.gateway")

_ASKABLE = frozenset({BackendKind.OPENAI, BackendKind.OPENAI_COMPATIBLE, BackendKind.ANTHROPIC})


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


@dataclass(frozen=True, slots=True)
class ListedModel:
    id: str
    owned_by: str
    """The provider serving it (its first backend's)."""
    anthropic: bool
    """Callable through Anthropic's Messages API."""


@dataclass
class ModelDirectory:
    routes: RoutesConfig
    secrets: dict[str, str]
    cache_s: float = 300.0
    timeout_s: float = 5.0
    _advertised: dict[str, tuple[float, frozenset[str]]] = field(default_factory=dict)

    def lookup(self, name: str, principal: Principal) -> ListedModel | None:
        """``name`` as the caller may call it, or None (not routed, or not theirs)."""
        backends = self.routes.backends_for(name)
        if not backends or not principal.may_use(name):
            return None
        return _listed(name, backends)

    async def list_for(self, principal: Principal) -> list[ListedModel]:
        """Every model the caller may call, in the routes file's order, each once."""
        seen: dict[str, ListedModel] = {}
        for key, backend_names in self.routes.models.items():
            names = [key]
            if is_pattern(key):
                backends = [self.routes.backend(n) for n in backend_names]
                offered = await asyncio.gather(*(self._offered_by(b) for b in backends))
                # A pattern lists a name only if the name really routes through it.
                names = sorted(
                    {n for group in offered for n in group if self.routes.route_key(n) == key}
                )
            for name in names:
                listed = self.lookup(name, principal)
                if listed is not None:
                    seen.setdefault(name, listed)
        return list(seen.values())

    async def _offered_by(self, backend: BackendConfig) -> frozenset[str]:
        if backend.models is not None:
            return frozenset(backend.models)
        if backend.kind not in _ASKABLE:
            return frozenset()
        now = time.monotonic()
        cached = self._advertised.get(backend.name)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        names = await self._ask(backend)
        if names is None:
            names = cached[1] if cached is not None else frozenset()
        self._advertised[backend.name] = (now, names)
        return names

    async def _ask(self, backend: BackendConfig) -> frozenset[str] | None:
        base = backend.base_url.rstrip("/")
        url = (base if base.endswith("/v1") else base + "/v1") + "/models?limit=1000"
        headers = upstream_headers(backend, {}, self.secrets.get(backend.name))
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers) as answer,
            ):
                answer.raise_for_status()
                body = await answer.json(content_type=None)
            return frozenset(item["id"] for item in body["data"] if isinstance(item.get("id"), str))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            log.warning("backend %s did not list its models: %s", backend.name, error)
            return None


def _listed(name: str, backends: list[BackendConfig]) -> ListedModel:
    return ListedModel(
        id=name,
        owned_by=backends[0].provider_name,
        anthropic=any(b.kind.serves_anthropic(name) for b in backends),
    )
