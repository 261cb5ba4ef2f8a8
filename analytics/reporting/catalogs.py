"""Spend under a named catalog: ``/v1/spend?catalog=NAME`` prices the range again.

The catalogs are the files of ``reporting.catalogs_dir``, each named by its file's stem,
read once when the app starts (a bad file stops the start, naming it). The answer is the
re-pricing report (``analytics.repricing``) of the range, filters and groups asked, cut to
the spend columns: the groups, ``requests``, ``input_tokens``, ``output_tokens``,
``cost_usd`` (billed under the catalog, contracts included), ``list_cost_usd``, and
``billed_cost_usd`` (what the calls were billed when they were made).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
from starlette.requests import Request

from analytics.query_terms import Dimension, Filters
from analytics.reporting.params import invalid
from analytics.repricing import reprice
from tollgate.errors import SettingsError
from tollgate.pricing import PriceCatalog, load_catalog

SUFFIXES = (".yaml", ".yml", ".json")


def load_catalogs(directory: Path | None) -> dict[str, PriceCatalog]:
    """Each catalog file of ``directory`` by name; none without a directory."""
    if directory is None:
        return {}
    try:
        paths = sorted(directory.iterdir())
    except OSError as error:
        raise SettingsError(
            f"reporting.catalogs_dir {directory}: cannot be read ({error})"
        ) from None
    return {
        path.stem: load_catalog(path)
        for path in paths
        if path.suffix.lower() in SUFFIXES and path.is_file()
    }


def spend_under(
    request: Request,
    name: str,
    *,
    start: object,
    end: object,
    group_by: Sequence[Dimension],
    filters: Filters,
    tenant_scope: str | None,
) -> pa.Table:
    """The spend table of the range priced under catalog ``name`` (422 if unknown)."""
    catalogs: dict[str, PriceCatalog] = request.app.state.catalogs
    catalog = catalogs.get(name)
    if catalog is None:
        known = ", ".join(f"`{n}`" for n in sorted(catalogs)) or "none is configured"
        raise invalid("catalog", f"unknown catalog; known: {known}", name)
    lake = request.app.state.lake
    table = reprice(
        lake.path,
        catalog,
        start,  # type: ignore[arg-type]
        end,  # type: ignore[arg-type]
        group_by=group_by,
        filters=filters,
        tenant_scope=tenant_scope,
    )
    groups = [d.value for d in group_by]
    return pa.table(
        {
            **{name: table.column(name) for name in groups},
            "requests": table.column("requests"),
            "input_tokens": table.column("input_tokens"),
            "output_tokens": table.column("output_tokens"),
            "cost_usd": table.column("new_billed_usd"),
            "list_cost_usd": table.column("new_list_usd"),
            "billed_cost_usd": table.column("old_billed_usd"),
        }
    )
