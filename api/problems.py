"""Errors as RFC 9457 problem details (`application/problem+json`), mapped once, here.

Every error a client sees has `type`, `title`, `status` and a `detail` a lab user can act
on, whether it came from an `HTTPException` (ours or the framework's 404/405), request
validation or a domain exception. The type is one URI per status,
`urn:hwctl:problem:<status name>` (e.g. `urn:hwctl:problem:not-found`), and the title that
status's phrase, so a client tells kinds of error apart the same way for every route.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


class Problem(BaseModel):
    """The body of every error response."""

    type: str = Field(description="URI naming the problem kind: urn:hwctl:problem:<status name>")
    title: str = Field(description="short summary of the problem kind")
    status: int = Field(description="HTTP status code")
    detail: str = Field(description="what went wrong in this request, and how to fix it")
    errors: list[dict[str, Any]] | None = Field(None, description="per-field validation errors")


def problem_type(status: int) -> str:
    """The type URI of every problem answered with `status`."""
    return f"urn:hwctl:problem:{HTTPStatus(status).name.lower().replace('_', '-')}"


def problem_response(
    status: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=problem_type(status), title=HTTPStatus(status).phrase, status=status, detail=detail,
        errors=errors,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entry documenting problem-details bodies for `statuses`."""
    return {
        s: {"model": Problem, "description": HTTPStatus(s).phrase, "content": {PROBLEM_JSON: {}}}
        for s in statuses
    }


def key_reused(key: str, record: str) -> HTTPException:
    """An Idempotency-Key names one submission: reused with another body, answering with
    the first `record` would drop the new body's settings without a word."""
    return HTTPException(
        422, f"Idempotency-Key {key!r} was used for {record} with another body; "
        "use a new key for a new submission",
    )


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = [{"field": _field(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()]
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors


RETRY_AFTER_S = 5


def install_problem_handlers(
    app: FastAPI, domain_statuses: Mapping[type[Exception], int],
    unavailable: Mapping[type[Exception], Callable[[Exception], str]] | None = None,
) -> None:
    """Route every error through problem details; `domain_statuses` maps domain exceptions to
    codes, `unavailable` the exceptions of a dependency that is down (the database) to how
    each says why: those are 503 with a Retry-After, since the same request may then succeed."""

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(exc.status_code, str(exc.detail), headers=exc.headers)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail, errors = _validation_detail(exc)
        return problem_response(422, detail, errors=errors)

    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(500, "internal error; the server log has the traceback")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    for exc_type, status in domain_statuses.items():
        app.add_exception_handler(exc_type, _domain_handler(status))
    for exc_type, reason in (unavailable or {}).items():
        app.add_exception_handler(exc_type, _unavailable_handler(reason))
    app.add_exception_handler(Exception, unexpected_error)


def _unavailable_handler(reason: Callable[[Exception], str]) -> Any:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        log.warning("answering 503: %s", reason(exc))
        return problem_response(503, reason(exc), headers={"Retry-After": str(RETRY_AFTER_S)})

    return handle


def _domain_handler(status: int) -> Any:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return problem_response(status, str(exc))

    return handle
