"""The HTTP API Lambda: thin routes over the services. The team always comes from the authorizer, never the body."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.core import catalog
from controlplane.core.errors import DomainError, Unauthorized
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import JobRequest, ProviderCreate
from controlplane.handlers import container, http_errors

logger = Logger(service="ec2jobs-api")
tracer = Tracer(service="ec2jobs-api")
metrics = Metrics(namespace="ec2jobs", service="ec2jobs-api")
app = APIGatewayRestResolver(enable_validation=True)

# Routes API Gateway serves without the authorizer (read by the CDK stack and the local API front).
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset({("GET", "/openapi.json")})
MAX_IDEMPOTENCY_KEY = 255


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(status_code=status, content_type="application/json", body=body, headers=headers)


def _team() -> str:
    authorizer = app.current_event.request_context.authorizer
    team_id = authorizer.get("team_id") if authorizer else None
    if not team_id:
        raise Unauthorized("the request carries no authorised team (is the authorizer attached to this route?)")
    return str(team_id)


@app.exception_handler(DomainError)
def _domain_error(error: DomainError) -> Response[Any]:
    status = http_errors.status_for(error)
    if status >= 500:
        logger.warning("request failed upstream", extra={"code": error.code, "error_message": error.message})
    return _json(http_errors.body_for(error), status)


@app.exception_handler(RequestValidationError)
def _validation_error(error: RequestValidationError) -> Response[Any]:
    return _json(http_errors.validation_body(list(error.errors())), 422)


@app.not_found
def _not_found(_: Exception) -> Response[Any]:
    return _json({"code": "NOT_FOUND", "message": "no such route; see GET /openapi.json"}, 404)


# -- catalog ---------------------------------------------------------------------------------------------------


@app.get("/catalog")
def get_catalog(
    region: Annotated[str | None, Query(description="only types offered in this region")] = None,
    gpu: Annotated[str | None, Query(description="only this GPU type (aliases accepted)")] = None,
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


@app.post("/providers")
def add_provider(body: ProviderCreate) -> Response[Any]:
    provider = container.get().providers.add(_team(), body)
    logger.info("provider added", extra={"provider_id": provider.provider_id, "account_id": provider.account_id})
    return _json(provider.public(), 201)


@app.get("/providers")
def list_providers() -> Response[Any]:
    return _json({"providers": [p.public() for p in container.get().providers.list(_team())]})


@app.get("/providers/<provider_id>")
def get_provider(provider_id: str) -> Response[Any]:
    return _json(container.get().providers.get(_team(), provider_id).public())


@app.delete("/providers/<provider_id>")
def delete_provider(provider_id: str) -> Response[Any]:
    container.get().providers.delete(_team(), provider_id)
    return Response(status_code=204, body=None)


# -- jobs ------------------------------------------------------------------------------------------------------


@app.post("/jobs")
def submit_job(body: JobRequest) -> Response[Any]:
    key = app.current_event.headers.get("Idempotency-Key")
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


@app.get("/jobs")
def list_jobs(
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor from the previous page")] = None,
) -> Response[Any]:
    page = container.get().jobs.list(_team(), status, limit, cursor)
    return _json({"jobs": [job.public() for job in page.jobs], "next_cursor": page.next_cursor})


@app.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response[Any]:
    return _json(container.get().jobs.get(_team(), job_id).public())


@app.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response[Any]:
    job, terminated = container.cancel().cancel(_team(), job_id)
    logger.info("job cancelled", extra={"job_id": job_id, "terminated": terminated})
    return _json(job.public() | {"terminated_instances": terminated}, 200)


@app.get("/jobs/<job_id>/logs")
def get_job_logs(
    job_id: str,
    after: Annotated[str | None, Query(description="next_cursor from the previous page (a byte offset)")] = None,
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
    return _json({"job_id": job_id, "text": page.text, "next_cursor": page.next_cursor, "complete": page.complete})


# -- OpenAPI ---------------------------------------------------------------------------------------------------


@app.get("/openapi.json", include_in_schema=False)
def openapi() -> Response[Any]:
    return _json(app.get_openapi_json_schema(title="ec2jobs", version="1"), 200)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
