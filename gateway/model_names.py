"""The model a call names, as the gateway records it and labels its metrics with.

The name is the caller's text. A name some route knows is recorded as written (at most
``MAX_MODEL_NAME`` characters, which the door enforces). A name no route knows reached no
backend and is whatever the caller chose to send, so it is not stored: the usage event
records ``unknown-model-<first 12 hex digits of its SHA-256>`` instead. That is bounded,
holds no character a spreadsheet, a log or a shell could read as something else, and is
the same for the same name, so repeated probing still shows up as one value.

Metrics are labelled by the route, the routes file's key that matched (the exact name,
or the pattern such as ``llama-*``), so their label set is bounded by the routes file and
not by what callers send.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Collection

MAX_MODEL_NAME = 256
"""The contract's limit on names."""
UNKNOWN_MODEL_PREFIX = "unknown-model-"
UNROUTED_LABEL = "unknown"
"""The metric label of a call that named no known model."""


def unknown_model_name(model: str) -> str:
    """What the usage event records for a model no route knows."""
    digest = hashlib.sha256(model.encode("utf-8", "surrogatepass")).hexdigest()
    return UNKNOWN_MODEL_PREFIX + digest[:12]


def route_key(route_models: Collection[str], model: str) -> str | None:
    """The routes-file key that serves ``model``: itself if listed, else the first pattern
    that matches (the order ``RoutesConfig.backends_for`` uses), else None."""
    if model in route_models:
        return model
    return next((key for key in route_models if fnmatch.fnmatchcase(model, key)), None)
