"""The HTTP API's routes for bytes (a Powertools Router that handlers/api_routes.py includes): uploads of workdir and
file_mounts archives, and a job's outputs and checkpoints with short-lived download URLs (docs/artifacts.md).
The team always comes from the authorizer, never the body; another team's uploads and jobs answer 404."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.event_handler.router import APIGatewayRouter

from controlplane.handlers import caller, container
from controlplane.handlers import schemas as views
from controlplane.handlers.openapi_doc import ID_PATTERN, MAX_ID_LENGTH, responses

logger = Logger(service="ec2jobs-api")
router = APIGatewayRouter()  # type: ignore[no-untyped-call]  # powertools leaves its __init__ untyped

UploadId = Annotated[
    str, Path(min_length=23, max_length=23, pattern=views.UPLOAD_ID_PATTERN, description="an upload id (up-...)")
]
JobId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN, description="a job id")]


def _json(body: Any, status: int = 200) -> Response[Any]:
    return Response(status_code=status, content_type="application/json", body=body)


def _team() -> str:
    return caller.team_of(router.current_event.request_context.authorizer)


# -- uploads ---------------------------------------------------------------------------------------------------


@router.post(
    "/uploads",
    responses=responses(
        201,
        views.UploadUrls,
        "the upload is recorded (pending): PUT each part to its URL, then POST /uploads/{upload_id}/complete",
        400,
        409,
        413,
        415,
        422,
    ),
)
def create_upload(body: views.UploadCreate) -> Response[Any]:
    """Start an upload of a workdir or file_mounts archive: presigned PUT URLs straight to the artifacts bucket (one
    for an archive of at most part_size bytes, else one per part). 409 when the team already has 20 in progress."""
    created = container.uploads().create(_team(), body.kind, body.size, body.sha256)
    logger.info("upload created", extra={"upload_id": created["upload_id"], "size": body.size, "kind": body.kind})
    return _json(created, 201)


@router.post(
    "/uploads/<upload_id>/parts",
    responses=responses(200, views.UploadUrls, "fresh URLs for every part of the pending upload", 404, 409, 422),
)
def refresh_upload_parts(upload_id: UploadId) -> Response[Any]:
    """New URLs for a pending upload's parts, e.g. when a PUT answered 403 (a URL signed late in the signer's
    session can stop working before its expiry)."""
    return _json(container.uploads().parts(_team(), upload_id))


@router.post(
    "/uploads/<upload_id>/complete",
    responses=responses(
        200,
        views.UploadCompleted,
        "the upload is complete and its size checked; completing it again answers the same",
        400,
        404,
        409,
        413,
        415,
        422,
    ),
)
def complete_upload(upload_id: UploadId, body: views.UploadCompleteRequest) -> Response[Any]:
    """Finish an upload: every part's number and ETag ([] for a single-PUT upload). 400 when a part is missing or
    the stored size is not the declared one."""
    parts = [part.model_dump() for part in body.parts]
    done = container.uploads().complete(_team(), upload_id, parts)
    logger.info("upload completed", extra={"upload_id": upload_id})
    return _json(done)


# -- outputs ---------------------------------------------------------------------------------------------------


@router.get(
    "/jobs/<job_id>/outputs",
    responses=responses(
        200, views.OutputListing, "the job's files (outputs or checkpoints) with presigned GET URLs", 400, 404, 422
    ),
)
def list_outputs(
    job_id: JobId,
    kind: Annotated[
        Literal["outputs", "checkpoints"],
        Query(description="outputs (EC2JOBS_OUTPUT_DIR) or checkpoints (EC2JOBS_CHECKPOINT_DIR)"),
    ] = "outputs",
    cursor: Annotated[str | None, Query(max_length=2048, description="next_cursor from the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many files")] = 1000,
) -> Response[Any]:
    """What the job's instance stored under its outputs (or checkpoints), each file with a GET URL valid at most an
    hour; follow next_cursor when there are more than `limit`."""
    return _json(container.outputs().list(_team(), job_id, kind, cursor, limit))
