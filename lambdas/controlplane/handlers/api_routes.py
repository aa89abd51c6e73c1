"""The API's resolver and its routes (catalog, providers, jobs, tokens, the OpenAPI document; uploads and outputs are
handlers/api_artifacts.py's router): what the api Lambda serves, and how errors become answers. handlers/api.py
imports this module at its first request, not at the cold start: Powertools' REST resolver with OpenAPI validation,
Pydantic and the request models are most of the handler's import time (docs/cold-start.md). The team always comes
from the authorizer, never the body."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.metrics import MetricUnit

from controlplane.core import catalog
from controlplane.core.errors import DomainError
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import JobRequest, ProviderCreate, utcnow
from controlplane.handlers import caller, container, http_errors
from controlplane.handlers import schemas as views
from controlplane.handlers.api import logger, metrics
from controlplane.handlers.api_admission import router as admission_router
from controlplane.handlers.api_artifacts import router as artifacts_router
from controlplane.handlers.openapi_doc import ID_PATTERN, MAX_ID_LENGTH, document, responses

app = APIGatewayRestResolver(enable_validation=True)
app.include_router(artifacts_router)  # uploads, outputs and checkpoints (handlers/api_artifacts.py)
app.include_router(admission_router)  # limits and usage (handlers/api_admission.py)

MAX_IDEMPOTENCY_KEY = 255


ProviderId = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="a provider id (prov-...)")
]
JobId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="a job id")]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(status_code=status, content_type="application/json", body=body, headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    return _json({"code": code, "message": message}, status, headers)


def _team() -> str:
    return caller.team_of(app.current_event.request_context.authorizer)


@app.exception_handler(DomainError)
def _domain_error(error: DomainError) -> Response[Any]:
    status = http_errors.status_for(error)
    if status >= 500:
        logger.warning("request failed upstream", extra={"code": error.code, "error_message": error.message})
    return _json(http_errors.body_for(error), status)


@app.exception_handler(RequestValidationError)
def _validation_error(error: RequestValidationError) -> Response[Any]:
    return _json(http_errors.validation_body(list(error.errors()), _submitted_secrets()), 422)


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_media_type(_: RequestUnsupportedContentType) -> Response[Any]:
    return _error(415, "UNSUPPORTED_MEDIA_TYPE", "the request body must be JSON: send Content-Type: application/json")


@app.exception_handler(ServiceError)
def _service_error(error: ServiceError) -> Response[Any]:
    return _error(error.status_code, http_errors.code_for_status(error.status_code), str(error.msg))


@app.exception_handler(Exception)
def _unexpected(error: Exception) -> Response[Any]:
    """Still a 500, but in the documented shape; the traceback goes to the log, never to the client."""
    logger.exception("request failed unexpectedly", extra={"error_type": type(error).__name__})
    return _error(500, "INTERNAL_ERROR", "the request failed unexpectedly; retry, and report it if it persists")


@app.not_found
def _not_found(_: Exception) -> Response[Any]:
    """404 for a path the API does not have; 405 (with Allow) for a method a path does not have."""
    event = app.current_event
    allowed = _methods_for(event.path)
    if allowed:
        message = f"{event.http_method} is not allowed on {event.path}; allowed: {', '.join(allowed)}"
        return _error(405, "METHOD_NOT_ALLOWED", message, {"Allow": ", ".join(allowed)})
    return _error(404, "NOT_FOUND", "no such route; see GET /openapi.json")


def _routes() -> list[Any]:
    return [*app._static_routes, *app._dynamic_routes]  # powertools keeps its routes here


def _methods_for(path: str) -> list[str]:
    return sorted({route.method for route in _routes() if route.rule.match(path)})


def takes_body(method: str, path: str) -> bool:
    """Whether the route `method path` resolves to declares a JSON body (request_guard checks it first)."""
    return any(route.method == method and route.rule.match(path) and route.dependant.body_params for route in _routes())


def _submitted_secrets() -> list[str]:
    """The values a 422 must not repeat: env values and the provider secret, wherever the body put them."""
    try:
        body = app.current_event.json_body
    except Exception:  # noqa: BLE001 - no readable body, nothing to hide
        return []
    return http_errors.secret_values(body)


# -- catalog ---------------------------------------------------------------------------------------------------


@app.get("/catalog", responses=responses(200, views.Catalog, "GPU types, counts, instance types, prices", 400, 422))
def get_catalog(
    region: Annotated[str | None, Query(max_length=64, description="only types offered in this region")] = None,
    gpu: Annotated[str | None, Query(max_length=64, description="only this GPU type (aliases accepted)")] = None,
) -> Response[Any]:
    _team()
    current = catalog.get()
    try:
        region = current.check_region(region) if region else None
        gpu = current.canonical_gpu(gpu) if gpu else None
    except ValueError as error:
        return _json({"code": "INVALID_QUERY", "message": str(error)}, 400)
    return _json(current.describe(region=region, gpu=gpu))


# -- providers -------------------------------------------------------------------------------------------------


@app.post(
    "/providers",
    responses=responses(201, views.Provider, "the provider, its keys checked", 400, 409, 413, 415, 422),
)
def add_provider(body: ProviderCreate) -> Response[Any]:
    provider = container.get().providers.add(_team(), body)
    logger.info("provider added", extra={"provider_id": provider.provider_id, "account_id": provider.account_id})
    return _json(provider.public(), 201)


@app.get("/providers", responses=responses(200, views.ProviderList, "the team's providers"))
def list_providers() -> Response[Any]:
    return _json({"providers": [p.public() for p in container.get().providers.list(_team())]})


@app.get("/providers/<provider_id>", responses=responses(200, views.Provider, "the provider", 404, 422))
def get_provider(provider_id: ProviderId) -> Response[Any]:
    return _json(container.get().providers.get(_team(), provider_id).public())


@app.delete("/providers/<provider_id>", responses=responses(204, None, "deleted", 404, 409, 422))
def delete_provider(provider_id: ProviderId) -> Response[Any]:
    container.get().providers.delete(_team(), provider_id)
    return Response(status_code=204, body=None)


# -- jobs ------------------------------------------------------------------------------------------------------


@app.post(
    "/jobs",
    responses=responses(
        202,
        views.JobAccepted,
        "the job is recorded PENDING and its launch workflow started, or QUEUED until its team's limits admit it "
        "(docs/budgets.md); a replay of an Idempotency-Key returns the same job with Idempotent-Replayed: true",
        400,
        404,
        413,
        415,
        422,
        headers={
            "Location": "the job's URL, /jobs/{job_id}",
            "Idempotent-Replayed": "true when an earlier request with this Idempotency-Key created the job",
        },
    ),
)
def submit_job(
    body: JobRequest,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY,
            description="retrying with the same key and body returns the same job instead of a second one",
        ),
    ] = None,
) -> Response[Any]:
    key = idempotency_key
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        return _json(
            {"code": "VALIDATION_ERROR", "message": f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters"},
            422,
        )
    submission = container.get().jobs.submit(_team(), body, key)
    job = submission.job
    if not submission.replayed:
        metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
        logger.info("job submitted", extra={"job_id": job.job_id, "instance_type": job.instance_type})
    headers = {"Location": f"/jobs/{job.job_id}"}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(
        {
            "job_id": job.job_id,
            "status": job.status,
            "status_detail": job.status_detail,
            "instance_type": job.instance_type,
            "region": job.region,
            "hourly_price": job.hourly_price,
            "use_spot": job.use_spot,
            "on_demand_price": job.on_demand_price,
            "notes": job.notes,
        },
        202,
        headers,
    )


@app.get("/jobs", responses=responses(200, views.JobList, "the team's jobs, newest first", 400, 422))
def list_jobs(
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 50,
    cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor from the previous page")] = None,
) -> Response[Any]:
    page = container.get().jobs.list(_team(), status, limit, cursor)
    return _json({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


@app.get("/jobs/<job_id>", responses=responses(200, views.JobView, "the job", 404, 422))
def get_job(job_id: JobId) -> Response[Any]:
    return _json(container.get().jobs.get(_team(), job_id).public())


@app.post(
    "/jobs/<job_id>/cancel",
    responses=responses(200, views.JobCancelled, "the job, CANCELLED, and the instances terminated", 404, 409, 422),
)
def cancel_job(job_id: JobId) -> Response[Any]:
    job, terminated = container.cancel().cancel(_team(), job_id)
    logger.info("job cancelled", extra={"job_id": job_id, "terminated": terminated})
    return _json(job.public() | {"terminated_instances": terminated}, 200)


@app.get("/jobs/<job_id>/logs", responses=responses(200, views.LogPage, "a page of the job's output", 400, 404, 422))
def get_job_logs(
    job_id: JobId,
    after: Annotated[
        str | None,
        # Checked by the service (ASCII digits, at most 15): anything else is the documented 400 INVALID_REQUEST.
        Query(max_length=64, description="next_cursor from the previous page (a byte offset)"),
    ] = None,
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=1048576,
            description="at most this many bytes of output; fewer when the text needs much escaping (every page "
            "fits Lambda's 6 MB response), so follow next_cursor",
        ),
    ] = 262144,
) -> Response[Any]:
    page = container.get().jobs.logs(_team(), job_id, after, limit)
    return _json(
        {
            "job_id": job_id,
            "text": page.text,
            "next_cursor": page.next_cursor,
            "complete": page.complete,  # final and whole
            "final": page.final,  # stop polling
        }
    )


# -- tokens (helper TOKENS' block: a team lists and revokes its own tokens; issuing is an admin action) ---------


def _token_id() -> str | None:
    authorizer = app.current_event.request_context.authorizer
    return str(authorizer["token_id"]) if authorizer and authorizer.get("token_id") else None


@app.get("/tokens", responses=responses(200, views.TokenList, "the team's tokens, never the tokens themselves"))
def list_tokens() -> Response[Any]:
    """The team's tokens, never the tokens themselves: id, first characters, label, created, expires."""
    team_id, now = _team(), utcnow()
    records = container.get().teams.list_tokens(team_id)
    return _json({"tokens": [t.public(now, _token_id()) for t in records]})


@app.delete("/tokens/<token_id>", responses=responses(204, None, "revoked", 400, 404, 422))
def revoke_token(
    token_id: Annotated[str, Path(pattern=r"^tok-[A-Za-z0-9_-]{1,60}$", description="a token id (see GET /tokens)")],
) -> Response[Any]:
    """Revoke one of the team's tokens (within the authorizer's 300 s cache on a deployed stack)."""
    container.get().teams.revoke(_team(), token_id)
    logger.info("token revoked", extra={"token_id": token_id})
    return Response(status_code=204, body=None)


# -- end of the tokens block ------------------------------------------------------------------------------------


# -- OpenAPI ---------------------------------------------------------------------------------------------------


@app.get("/openapi.json", include_in_schema=False)
def openapi() -> Response[Any]:
    return _json(document(app), 200)
