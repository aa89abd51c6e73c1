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
    """Pydantic errors → one readable message plus per-field details (values never echoed)."""
    summary, details = errors.describe_validation_problems(problems)
    return {"code": "VALIDATION_ERROR", "message": summary, "details": details}
