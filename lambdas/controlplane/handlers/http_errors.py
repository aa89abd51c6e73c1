"""The one place where domain exceptions become HTTP responses."""

from __future__ import annotations

from typing import Any

from controlplane.core import errors

STATUS: dict[type[errors.DomainError], int] = {
    errors.InvalidSpec: 400,
    errors.InvalidRequest: 400,
    errors.InvalidCredentials: 400,
    errors.Unauthorized: 401,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TransitionRefused: 409,
    errors.IdempotencyKeyReused: 422,
    errors.UpstreamUnavailable: 503,
}


def status_for(error: errors.DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def body_for(error: errors.DomainError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details:
        body["details"] = error.details
    return body


def validation_body(problems: list[dict[str, Any]]) -> dict[str, Any]:
    """Pydantic errors → one readable message plus per-field details. Input values are never echoed (they may be
    secrets)."""
    details = []
    for problem in problems:
        location = ".".join(str(part) for part in problem.get("loc", ()) if part not in {"body", "query", "header"})
        message = str(problem.get("msg", "is not valid")).removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "is not a supported field (see the task spec in the README)"
        elif problem.get("type") == "missing":
            message = "is required"
        elif problem.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        details.append({"field": location or "body", "message": message})
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "the request is not valid"
    return {"code": "VALIDATION_ERROR", "message": summary, "details": details}
