"""How failures become HTTP answers: a `CallsError` by its kind, a validation error with one
readable line per problem next to FastAPI's own shape."""

from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from starter.service import CallsError, InvalidInput

STATUS_FOR_KIND: Final = {
    "invalid": 422,
    "not_found": 404,
    "rejected": 409,
    "unavailable": 503,
    "failed": 502,
}


def problem_detail(problems: list[str]) -> list[dict[str, Any]]:
    """FastAPI's validation shape for problems written as "field.path: message"."""
    detail = []
    for problem in problems:
        field, _, message = problem.partition(": ")
        detail.append(
            {"loc": ["body", *field.split(".")], "msg": message or problem, "type": "value_error"}
        )
    return detail


async def calls_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CallsError)
    status = STATUS_FOR_KIND.get(exc.kind, 502)
    if isinstance(exc, InvalidInput):
        body: dict[str, Any] = {"detail": problem_detail(exc.problems), "message": str(exc)}
    else:
        body = {"detail": str(exc), "kind": exc.kind}
    return JSONResponse(status_code=status, content=body)


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's shape, plus one readable line per problem naming the field (its `msg` alone
    # says "Field required" without saying which).
    assert isinstance(exc, RequestValidationError)
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "header")]
        message = "unknown field" if error.get("type") == "extra_forbidden" else error["msg"]
        lines.append(f"{'.'.join(loc) or 'body'}: {message}")
    detail = [
        {key: value for key, value in error.items() if key in ("loc", "msg", "type")}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail, "message": "; ".join(lines)})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CallsError, calls_error)
    app.add_exception_handler(RequestValidationError, validation_error)
