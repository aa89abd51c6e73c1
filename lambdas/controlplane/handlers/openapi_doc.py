"""GET /openapi.json: powertools' generated document, with every status code the API answers, the bearer security
scheme and real response schemas (handlers/schemas.py). Routes declare theirs with `responses(...)`; `document`
adds what every authorised route can answer (401, 403, 429, 500, 503) to any route that did not."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from controlplane.handlers.schemas import ErrorBody

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
    from pydantic import BaseModel

TITLE = "ec2jobs"
VERSION = "1"
SECURITY_SCHEME = "bearerAuth"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # provider and job ids: what intake accepts for a job_id
MAX_ID_LENGTH = 64
JSON = "application/json"

ERRORS: dict[int, str] = {
    400: "the request cannot be carried out as written (INVALID_SPEC, INVALID_REQUEST, INVALID_CREDENTIALS, "
    "INVALID_QUERY), or its body is not UTF-8 JSON nested at most 32 levels (INVALID_ENCODING, INVALID_JSON)",
    401: "no bearer token, or one that is unknown, expired or revoked (UNAUTHORIZED)",
    403: "the token may not call this route (FORBIDDEN)",
    404: "no such resource for this team; another team's resources look the same as missing ones (NOT_FOUND)",
    409: "the request conflicts with the resource's state (CONFLICT)",
    413: "the request body exceeds 1 MiB (PAYLOAD_TOO_LARGE)",
    415: "the request body is not application/json (UTF-8) (UNSUPPORTED_MEDIA_TYPE)",
    422: "a field, parameter or header is not valid (VALIDATION_ERROR, with one entry per field in details), or an "
    "Idempotency-Key was reused with a different body (IDEMPOTENCY_KEY_REUSED)",
    429: "too many requests for this team or the stage (THROTTLED); retry with backoff",
    500: "an unexpected failure (INTERNAL_ERROR); retry, and report it with the response's request id if it lasts",
    503: "an AWS dependency could not be reached; retrying later may work (UPSTREAM_UNAVAILABLE)",
}
COMMON_ERRORS = (401, 403, 429, 500, 503)


def _error_response(status: int) -> OpenAPIResponse:
    return {"description": ERRORS[status], "content": {JSON: {"model": ErrorBody}}}  # type: ignore[typeddict-item]


def responses(
    status: int,
    model: type[BaseModel] | None,
    description: str,
    *errors: int,
    headers: dict[str, str] | None = None,
) -> dict[int, OpenAPIResponse]:
    """A route's responses: its success status with `model` as the body (None: no body), the errors it can answer
    besides the common ones, all with the ErrorBody schema."""
    success: OpenAPIResponse = {"description": description}
    if model is not None:
        success["content"] = {JSON: {"model": model}}  # type: ignore[typeddict-item]
    if headers:
        success["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}  # type: ignore[typeddict-item]
            for name, text in headers.items()
        }
    return {status: success} | {code: _error_response(code) for code in sorted({*errors, *COMMON_ERRORS})}


def document(app: APIGatewayRestResolver) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    # Powertools' OpenAPI models (about 35 ms to import) serve only this route: not at the API's cold start.
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    raw = app.get_openapi_json_schema(
        title=TITLE,
        version=VERSION,
        description="ec2jobs control plane API. Every error has the Error shape {code, message, details?}; "
        "see docs/api.md for status codes and limits.",
        security_schemes={
            SECURITY_SCHEME: HTTPBearer(description="a team's API token (ej_...): Authorization: Bearer <token>")
        },
        security=[{SECURITY_SCHEME: []}],
    )
    spec: dict[str, Any] = json.loads(raw)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    error_ref = {"$ref": "#/components/schemas/" + _error_schema_name(schemas)}
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            _complete(operation.setdefault("responses", {}), error_ref)
    used = json.dumps(spec.get("paths", {}))
    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        if f'"#/components/schemas/{name}"' not in used:
            schemas.pop(name, None)
    return spec


def _error_schema_name(schemas: dict[str, Any]) -> str:
    for name, schema in schemas.items():
        if schema.get("title") == "Error":
            return name
    schemas["Error"] = ErrorBody.model_json_schema()
    return "Error"


def _complete(operation_responses: dict[str, Any], error_ref: dict[str, str]) -> None:
    """Errors every route can answer, the API's own 422 shape, and no body on 204."""
    for status in COMMON_ERRORS:
        error = {"description": ERRORS[status], "content": {JSON: {"schema": error_ref}}}
        operation_responses.setdefault(str(status), error)
    validation = operation_responses.get("422")
    if validation and "HTTPValidationError" in json.dumps(validation):
        operation_responses["422"] = {"description": ERRORS[422], "content": {JSON: {"schema": error_ref}}}
    if "204" in operation_responses:
        operation_responses["204"].pop("content", None)
