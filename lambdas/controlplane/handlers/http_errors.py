"""The one place where domain exceptions become HTTP responses."""

from __future__ import annotations

import re
from typing import Any

from controlplane.core import admission, errors

STATUS: dict[type[errors.DomainError], int] = {
    errors.InvalidSpec: 400,
    errors.InvalidRequest: 400,
    errors.InvalidCredentials: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TransitionRefused: 409,
    errors.IdempotencyKeyReused: 422,
    admission.OverLimit: 422,
    admission.QueueFull: 429,
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


# A field name the API repeats in a message: a JSON key as people write them. Anything else (a key made of a
# request's text, e.g. a form body read as a field name) is not repeated.
_SAFE_FIELD_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNNAMED_FIELD = "(an unsupported field)"
_REDACTED = "<redacted>"
_SECRET_FIELDS = frozenset({"secret_access_key"})
_MIN_SECRET = 4  # shorter values are too common in ordinary text to be told apart from it
_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
_CODES |= {409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 422: "VALIDATION_ERROR"}
_CODES |= {429: "THROTTLED", 500: "INTERNAL_ERROR", 503: "UPSTREAM_UNAVAILABLE"}


def code_for_status(status: int) -> str:
    return _CODES.get(status, "ERROR")


def secret_values(body: Any) -> list[str]:
    """Env values and the provider secret in a request body (any nesting): what an error message must not show."""
    found: list[str] = []
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "envs" and isinstance(value, dict):
                    found += [str(v) for v in value.values() if isinstance(v, str | int | float)]
                elif key in _SECRET_FIELDS and isinstance(value, str):
                    found.append(value)
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return sorted({v for v in found if len(v) >= _MIN_SECRET}, key=len, reverse=True)


def _safe_field(field: str) -> str:
    parts = field.split(".")
    if all(_SAFE_FIELD_PART.fullmatch(part) for part in parts):
        return field
    safe = [part for part in parts if _SAFE_FIELD_PART.fullmatch(part)]
    prefix = ".".join(safe[: next(i for i, p in enumerate(parts) if not _SAFE_FIELD_PART.fullmatch(p))])
    return f"{prefix}: {_UNNAMED_FIELD}" if prefix else _UNNAMED_FIELD


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def validation_body(problems: list[dict[str, Any]], secrets: list[str] | None = None) -> dict[str, Any]:
    """Pydantic errors → one readable message plus per-field details. Input values are never echoed: field names
    that are not plain keys are not repeated, and `secrets` (env values, the provider secret) are redacted from
    messages a validator wrote."""
    _, details = errors.describe_validation_problems(problems)
    secrets = secrets or []
    details = [
        {"field": _scrub(_safe_field(d["field"]), secrets), "message": _scrub(d["message"], secrets)} for d in details
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details) or "the request is not valid"
    return {"code": "VALIDATION_ERROR", "message": summary, "details": details}
