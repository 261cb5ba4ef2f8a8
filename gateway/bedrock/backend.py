"""The Bedrock backends of a routes file: their signers, and each call's request.

A model name maps to a Bedrock model id or inference profile id through the backend's
``deployments`` (default: the name itself), e.g. ``claude-sonnet-4`` →
``us.anthropic.claude-sonnet-4-20250514-v1:0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec
from botocore.credentials import Credentials
from botocore.session import Session
from yarl import URL

from gateway.bedrock.converse import ConverseTranslation, converse_body
from gateway.bedrock.invoke import InvokeTranslation, invoke_body
from gateway.bedrock.signing import BedrockSigner
from gateway.bedrock.translation import Translation
from gateway.errors import Dialect, InvalidRequest
from gateway.routes import BackendConfig, BackendKind, RoutesConfig
from tollgate.contract import Operation
from tollgate.errors import SettingsError


def standard_credentials() -> Credentials | None:
    """What botocore's standard credential chain finds, or None."""
    return Session().get_credentials()


class BedrockBackends:
    """Prepares calls to the routes file's Bedrock backends."""

    def __init__(self, signers: Mapping[str, BedrockSigner]) -> None:
        self._signers = dict(signers)

    @classmethod
    def from_routes(
        cls,
        routes: RoutesConfig,
        secrets: Mapping[str, str],
        find_credentials: Callable[[], Credentials | None] = standard_credentials,
    ) -> BedrockBackends:
        """Signers for every Bedrock backend; fails start-up when one has no credentials."""
        signers: dict[str, BedrockSigner] = {}
        credentials: Credentials | None = None
        for backend in routes.backends:
            if backend.kind is not BackendKind.BEDROCK:
                continue
            assert backend.region is not None
            api_key = secrets.get(backend.name)
            if api_key is None and credentials is None:
                credentials = find_credentials()
                if credentials is None:
                    raise SettingsError(
                        f"backend {backend.name}: no AWS credentials found by the standard "
                        "chain (environment, shared files, SSO, container or instance role) "
                        "and no api_key_env set"
                    )
            signers[backend.name] = BedrockSigner(
                backend.region, api_key=api_key, credentials=credentials
            )
        return cls(signers)

    def prepare(
        self,
        backend: BackendConfig,
        operation: Operation,
        dialect: Dialect,
        model: str,
        payload: dict[str, Any],
        streamed: bool,
    ) -> Translation:
        """The signed request for one call, and the translation of its answer."""
        model_id = backend.deployments.get(model, model)
        if dialect is Dialect.ANTHROPIC:
            action = "invoke-with-response-stream" if streamed else "invoke"
            body: dict[str, Any] = invoke_body(payload)
            kind: type[Translation] = InvokeTranslation
        elif operation is Operation.CHAT:
            action = "converse-stream" if streamed else "converse"
            body = converse_body(payload)
            kind = ConverseTranslation
        else:
            raise InvalidRequest(
                f"Bedrock backends serve chat completions and messages, not {operation.value}"
            )
        base = (backend.base_url or "").rstrip("/")
        url = f"{base}/model/{quote(model_id, safe='')}/{action}"
        raw = msgspec.json.encode(body)
        headers = {
            "content-type": "application/json",
            "accept": "application/vnd.amazon.eventstream" if streamed else "application/json",
        }
        signed = self._signers[backend.name].headers(url, raw, headers)
        return kind(URL(url, encoded=True), raw, signed, model_id)
