"""The routes file: which models exist, which backends serve them, who may call.

Read once at start-up. Backend credentials are named by environment variable, and the
caller passes the environment in, so this module reads none itself.

```yaml
backends:
  - name: openai-primary
    kind: openai                 # openai | azure | anthropic | openai_compatible | bedrock
    base_url: https://api.openai.com
    api_key_env: OPENAI_API_KEY
    timeout_s: 120
    priority: 0                  # lower is tried first
    weight: 3                    # share of traffic among equal priorities
  - name: azure-east
    kind: azure
    base_url: https://acme-east.openai.azure.com
    api_key_env: AZURE_OPENAI_API_KEY
    api_version: "2024-10-21"
    deployments: {gpt-4o: gpt4o-prod}
    priority: 1
  - name: bedrock-us
    kind: bedrock                # SigV4 by the standard AWS credential chain, or
    region: us-east-1            #   api_key_env: AWS_BEARER_TOKEN_BEDROCK (a Bedrock API key)
    deployments: {claude-sonnet-4: us.anthropic.claude-sonnet-4-20250514-v1:0}
models:
  gpt-4o: [openai-primary, azure-east]
  "llama-*": [vllm]              # fnmatch patterns; exact names win
deployments:                     # Azure OpenAI clients: deployment name → model
  gpt4o-prod: gpt-4o             # unlisted deployment names are taken as model names
auth: {...}                      # see gateway/auth.py
```
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from gateway.auth import AuthConfig
from tollgate.errors import SettingsError


class BackendKind(StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"
    """vLLM, Ollama, LM Studio and any server speaking OpenAI's API."""

    BEDROCK = "bedrock"
    """AWS Bedrock: Claude in Anthropic's dialect, every model in OpenAI's (Converse)."""

    @property
    def api_family(self) -> str | None:
        """The one API dialect this kind speaks; None for Bedrock, which speaks both."""
        if self is BackendKind.BEDROCK:
            return None
        return "anthropic" if self is BackendKind.ANTHROPIC else "openai"

    def serves_anthropic(self, model: str) -> bool:
        """Whether a call in Anthropic's dialect to ``model`` can go to this kind."""
        if self is BackendKind.BEDROCK:
            return "anthropic." in model or model.startswith("claude")
        return self is BackendKind.ANTHROPIC

    def serves(self, family: str, model: str) -> bool:
        """Whether a call in ``family``'s dialect (openai, anthropic) to ``model`` fits."""
        if family == "anthropic":
            return self.serves_anthropic(model)
        return self is not BackendKind.ANTHROPIC


_PROVIDER_NAMES = {
    BackendKind.OPENAI: "openai",
    BackendKind.AZURE: "azure.ai.openai",
    BackendKind.ANTHROPIC: "anthropic",
    BackendKind.BEDROCK: "aws.bedrock",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(_Strict):
    """One upstream deployment."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    kind: BackendKind
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    api_key_env: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    priority: int = 0
    weight: Annotated[float, Field(gt=0)] = 1.0
    provider: str | None = None
    """OTel provider name for events; defaults by kind (openai_compatible: its name)."""
    api_version: str | None = None
    deployments: dict[str, str] = {}
    """Azure: model name → deployment name; Bedrock: model name → model id or inference
    profile id (default: the model name)."""
    region: str | None = None
    """Bedrock: the AWS region; ``base_url`` defaults to its runtime endpoint."""
    stream_usage: bool = True
    """Ask for ``stream_options.include_usage`` on streams; off for servers that refuse it
    (their streams are then metered by estimate)."""
    models: list[str] | None = None
    """The concrete model names this backend serves, for the models list of a pattern
    routed to it; absent: asked of the backend's ``GET /v1/models`` where it has one."""

    @model_validator(mode="before")
    @classmethod
    def _bedrock_endpoint_by_region(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == BackendKind.BEDROCK.value:
            region = data.get("region")
            if not isinstance(region, str) or not region:
                raise ValueError(f"backend {data.get('name')!r}: a bedrock backend needs region")
            data.setdefault("base_url", f"https://bedrock-runtime.{region}.amazonaws.com")
        return data

    @model_validator(mode="after")
    def _azure_needs_a_version(self) -> Self:
        if self.kind is BackendKind.AZURE and not self.api_version:
            raise ValueError(f"backend {self.name!r}: an azure backend needs api_version")
        return self

    @property
    def provider_name(self) -> str:
        return self.provider or _PROVIDER_NAMES.get(self.kind, self.name)


class RoutesConfig(_Strict):
    """The whole routes file."""

    backends: list[BackendConfig]
    models: dict[str, list[str]]
    deployments: dict[str, str] = {}
    """Azure OpenAI clients' deployment names → the model each stands for; a deployment
    name not listed here is taken as a model name."""
    auth: AuthConfig = AuthConfig()
    _by_name: dict[str, BackendConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _references_resolve(self) -> Self:
        self._by_name = {backend.name: backend for backend in self.backends}
        names = [backend.name for backend in self.backends]
        if len(names) != len(set(names)):
            raise ValueError("backend names must be unique")
        for model, backends in self.models.items():
            if not backends:
                raise ValueError(f"model {model!r} has no backends")
            unknown = set(backends) - set(names)
            if unknown:
                raise ValueError(f"model {model!r} names unknown backends {sorted(unknown)}")
            families = {self.backend(name).kind.api_family for name in backends} - {None}
            if len(families) > 1:
                raise ValueError(f"model {model!r} mixes OpenAI and Anthropic backends")
        for deployment, model in self.deployments.items():
            if self.backends_for(model) is None:
                raise ValueError(f"deployment {deployment!r} names unrouted model {model!r}")
        return self

    def backend(self, name: str) -> BackendConfig:
        return self._by_name[name]

    def backends_for(self, model: str) -> list[BackendConfig] | None:
        """The backends serving ``model``: an exact entry, else the first matching pattern."""
        names = self.models.get(model)
        if names is None:
            names = next((v for k, v in self.models.items() if fnmatch.fnmatchcase(model, k)), None)
        return None if names is None else [self.backend(name) for name in names]

    def route_key(self, model: str) -> str | None:
        """The ``models`` entry that routes ``model``: its own name, or the first pattern."""
        if model in self.models:
            return model
        return next((k for k in self.models if fnmatch.fnmatchcase(model, k)), None)


def model_of_deployment(routes: RoutesConfig, deployment: str) -> str:
    """The model an Azure client means by ``deployment``."""
    return routes.deployments.get(deployment, deployment)


def load_routes(path: Path) -> RoutesConfig:
    """Read and validate a routes file, or fail naming the problem."""
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SettingsError(f"cannot read routes file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"routes file {path} is not valid YAML: {error}") from None
    try:
        return RoutesConfig.model_validate(content)
    except ValidationError as error:
        problems = "\n  ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'routes'}: {e['msg']}" for e in error.errors()
        )
        raise SettingsError(f"invalid routes file {path}:\n  {problems}") from None


def backend_secrets(routes: RoutesConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """Backend name → API key, from the environment variables the routes name.

    A backend that names a variable which is unset fails start-up: better than a 401 from
    the provider on the first call.
    """
    secrets: dict[str, str] = {}
    missing = []
    for backend in routes.backends:
        if backend.api_key_env is None:
            continue
        value = environ.get(backend.api_key_env)
        if value:
            secrets[backend.name] = value
        else:
            missing.append(f"{backend.api_key_env} (backend {backend.name})")
    if missing:
        raise SettingsError("backend credentials are not set: " + ", ".join(missing))
    return secrets
