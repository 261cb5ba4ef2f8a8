"""Every error the reporting API answers with, mapped to HTTP in this one place.

A 422 names the parameter and says what is wrong with it, in ``detail`` (one line for
a person) and ``errors`` (one entry per problem, for a program)::

    {"detail": "query parameter `start`: Input should have timezone info",
     "errors": [{"in": "query", "parameter": "start", "message": "…", "input": "…"}]}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from analytics.queries import QueryError
from analytics.reporting.auth import Unauthorized
from tollgate.errors import TollgateError

log = logging.getLogger("tollgate.reporting")

_INPUT_SHOWN_CHARS = 200


class IsolationBreach(TollgateError):
    """A tenant-scoped answer held another tenant's rows; refused rather than sent (500)."""


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(QueryError, _invalid_query)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(IsolationBreach, _isolation_breach)
    app.add_exception_handler(Exception, _unexpected)


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = [_problem(entry) for entry in error.errors()]
    detail = "; ".join(f"{p['in']} parameter `{p['parameter']}`: {p['message']}" for p in problems)
    return JSONResponse({"detail": detail, "errors": problems}, status_code=422)


def _problem(entry: dict[str, Any]) -> dict[str, Any]:
    loc = [str(part) for part in entry.get("loc", ())]
    where = loc[0] if loc else "request"
    parameter = loc[1] if len(loc) > 1 else where
    problem: dict[str, Any] = {"in": where, "parameter": parameter, "message": entry["msg"]}
    if len(loc) > 2:
        problem["item"] = ".".join(loc[2:])
    value = entry.get("input")
    if isinstance(value, str | int | float) and where != "header":
        problem["input"] = str(value)[:_INPUT_SHOWN_CHARS]
    return problem


async def _invalid_query(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error), "errors": [{"message": str(error)}]}, 422)


async def _unauthorized(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, 401, headers={"WWW-Authenticate": "Bearer"})


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)


async def _isolation_breach(request: Request, error: Exception) -> JSONResponse:
    log.error("tenant isolation: %s", error, extra={"fields": {"path": request.url.path}})
    return JSONResponse({"detail": "internal error"}, 500)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("reporting request failed", extra={"fields": {"path": request.url.path}})
    return JSONResponse({"detail": "internal error"}, 500)
