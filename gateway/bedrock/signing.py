"""Credentials for Bedrock: SigV4 with the standard AWS credential chain, or an API key.

The chain is botocore's (environment variables, shared config and credential files, SSO,
web identity, container and instance roles), resolved once at start-up so a gateway
without credentials fails there rather than on its first call. A Bedrock API key (the
routes file's ``api_key_env``, by convention ``AWS_BEARER_TOKEN_BEDROCK``) is sent as a
bearer token instead, and no signing happens.
"""

from __future__ import annotations

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SERVICE = "bedrock"


class BedrockSigner:
    """Adds the credentials to one request for one backend."""

    def __init__(
        self, region: str, *, api_key: str | None = None, credentials: Credentials | None = None
    ) -> None:
        if api_key is None and credentials is None:
            raise ValueError("a Bedrock signer needs an API key or AWS credentials")
        self._region = region
        self._api_key = api_key
        self._credentials = credentials

    def headers(self, url: str, body: bytes, headers: dict[str, str]) -> list[tuple[str, str]]:
        """``headers`` plus the credentials for POSTing ``body`` to ``url``.

        ``url`` must be the exact bytes sent (percent-encoding included): SigV4 signs the
        path as written. ``host`` is signed from the URL, as the client will send it.
        """
        if self._api_key is not None:
            return [*headers.items(), ("authorization", f"Bearer {self._api_key}")]
        assert self._credentials is not None
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        # Refreshable credentials refresh here when they are near expiry (a blocking call
        # to STS or the instance metadata service, a few times an hour at most).
        frozen = self._credentials.get_frozen_credentials()
        SigV4Auth(frozen, SERVICE, self._region).add_auth(request)
        return list(request.headers.items())
