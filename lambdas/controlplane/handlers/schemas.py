"""The HTTP API's response bodies as pydantic models: what GET /openapi.json publishes for every status code.

The views are built from the domain records (core.models) so a field added there shows up here; the routes in
handlers/api_routes.py still return the records' `public()` dicts, and tests check those dicts validate against
these. Every model here is built at its first use (`defer_build`): the response views only for GET /openapi.json
(Powertools validates requests, not responses), the upload request bodies at their route's first request. Building
them all at the API's first request took about 10 ms (docs/cold-start.md)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from controlplane.core.lifecycle import JobStatus
from controlplane.core.markets import UseSpot
from controlplane.core.models import Attempt, Job
from controlplane.core.spec import TaskSpec


class DeferredModel(BaseModel):
    """A model built at its first use (validation, a JSON Schema), not when its class is made."""

    model_config = ConfigDict(defer_build=True)


class ErrorBody(DeferredModel):
    """Every error the API answers (4xx and 5xx) has this shape; `code` is stable, `message` is for a person."""

    model_config = ConfigDict(title="Error")

    code: str = Field(description="a stable machine-readable error code, e.g. NOT_FOUND, VALIDATION_ERROR")
    message: str = Field(description="what went wrong and what to do about it; never echoes the request body")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="per-field problems ({field, message}) or the failed check ({check})"
    )


class Provider(DeferredModel):
    """A provider as the API shows it: never the secret key, only a masked hint of the access key id."""

    model_config = ConfigDict(title="Provider")

    provider_id: str
    name: str
    region: str
    account_id: str
    user_arn: str
    access_key_id: str = Field(description="a masked hint (first and last four characters)")
    permissions_boundary: str | None
    created_at: dt.datetime


class ProviderList(DeferredModel):
    providers: list[Provider]


class SpecView(TaskSpec):
    """The task spec as a job shows it: env and secret values are <redacted>."""

    model_config = ConfigDict(defer_build=True)

    secrets: dict[str, str] = Field(default_factory=dict, description="the job's secrets: names, values <redacted>")


def _job_view() -> type[BaseModel]:
    """Job.public(): every Job field but the idempotency bookkeeping and the sealed secrets, all always present; the
    spec with env and secret values redacted (names kept)."""
    hidden = {"request_hash", "version", "spec", "sealed_secrets", "secret_names", "log_marker_at"}
    fields: dict[str, Any] = {
        name: (field.annotation, Field(description=field.description))
        for name, field in Job.model_fields.items()
        if name not in hidden
    }
    fields["attempts"] = (
        list[Attempt],
        Field(
            description="every attempt of the job, the current one last (one entry for a job that never relaunched): "
            "its instance, region, zone, market, launch and end, why it ended, billed seconds and cost; the job's "
            "billed_seconds and cost_estimate are their sums (docs/recovery.md)"
        ),
    )
    fields["spec"] = (
        SpecView | None,
        Field(description="the task spec as submitted; env and secret values are <redacted>"),
    )
    return create_model("Job", __base__=DeferredModel, **fields)


JobView: type[BaseModel] = _job_view()


class JobCancelled(JobView):  # type: ignore[misc,valid-type]
    model_config = ConfigDict(title="JobCancelled")

    terminated_instances: list[str] = Field(description="the EC2 instances terminated for the job")


class JobList(DeferredModel):
    jobs: list[JobView]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class JobAccepted(DeferredModel):
    """POST /jobs: the job is recorded PENDING and its launch workflow started, or QUEUED (its team's limits are full
    for now; status_detail says which: docs/budgets.md) and started once admitted."""

    job_id: str
    status: JobStatus
    status_detail: str | None = Field(default=None, description="QUEUED: the limit it waits for")
    instance_type: str | None
    region: str
    hourly_price: float | None = Field(description="USD/h on-demand list price; null on spot or auto (decided later)")
    use_spot: UseSpot
    on_demand_price: float | None
    notes: list[str]


class LogPage(DeferredModel):
    job_id: str
    text: str = Field(description="output from byte offset `after`, decoded as UTF-8")
    next_cursor: str = Field(description="the byte offset to pass as `after` for the next page")
    complete: bool = Field(
        description="true only when the log is whole and this page reached its end: the job ended and the relay read "
        "everything the instance wrote (confirmed by the job wrapper's drain handshake), or the job never had an "
        "instance (its empty log is whole). false while more may come, and also when final is true but the end of "
        "the output may be missing (the instance was terminated by a cancel, a spot interruption or a loss before "
        "the relay read it all)"
    )
    final: bool = Field(
        description="true once the job ended, nothing more will be relayed and this page reached the end of the "
        "relayed output: stop polling. complete then says whether the log is whole (false: its end may be missing)"
    )


class CatalogGpu(DeferredModel):
    gpu: str
    gpu_memory_gib: float | None
    counts: list[int] = Field(description="the GPU counts one instance can have")
    instance_types: list[str]


class CatalogInstanceType(DeferredModel):
    instance_type: str
    vcpus: int
    memory_gib: float
    gpu: str | None
    gpu_count: int
    gpu_memory_gib: float | None
    price_per_hour: float | None
    regions: list[str]


class Catalog(DeferredModel):
    prices: dict[str, Any] = Field(description="where the prices come from, their currency and caveats")
    regions: list[str]
    gpus: list[CatalogGpu]
    instance_types: list[CatalogInstanceType]


class Token(DeferredModel):
    """GET /tokens: what is stored about a token, never the token itself."""

    token_id: str
    label: str
    prefix: str = Field(description="the token's first characters, to tell tokens apart")
    created_at: dt.datetime
    expires_at: dt.datetime
    expired: bool
    current: bool = Field(description="true for the token this request was made with")


class TokenList(DeferredModel):
    tokens: list[Token]


# -- uploads and outputs (handlers/api_artifacts.py; docs/artifacts.md) -------------------------------------------

UPLOAD_ID_PATTERN = r"^up-[0-9a-f]{20}$"


def _json_integer(value: Any) -> Any:
    """A JSON integer as JSON Schema has it: 5 or 5.0, never `true` or "5" (pydantic's lax int takes both)."""
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]
MAX_UPLOAD_BYTES = 50 * 1024**3  # service/uploads.py MAX_UPLOAD_BYTES


class UploadCreate(DeferredModel):
    """POST /uploads: what is about to be uploaded (the archive the CLI packed)."""

    model_config = ConfigDict(extra="forbid", title="UploadCreate")

    kind: Literal["workdir", "file_mounts"] = Field(description="what the archive is for (the spec field it fills)")
    size: JsonInt = Field(ge=1, le=MAX_UPLOAD_BYTES, description="the archive's size in bytes (1 byte to 50 GiB)")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="the archive's SHA-256, 64 lowercase hex digits (recorded)"
    )


class UploadPartUrl(DeferredModel):
    part_number: int = Field(description="1..N: bytes (N-1) x part_size onwards, part_size of them (the last fewer)")
    url: str = Field(description="a presigned PUT; send the part's bytes as the body and keep the ETag answered")


class UploadUrls(DeferredModel):
    """POST /uploads (201) and POST /uploads/{upload_id}/parts (200): where to PUT the bytes."""

    model_config = ConfigDict(title="UploadUrls")

    upload_id: str = Field(description="up- and 20 hex digits; name it in workdir/file_mounts once complete")
    kind: Literal["workdir", "file_mounts"]
    size: int
    part_size: int = Field(description="bytes per part; one part (a single PUT) when size <= part_size")
    parts: list[UploadPartUrl]
    expires_at: dt.datetime = Field(
        description="the URLs stop working at the latest then (sooner if the signer's session ends: a 403 means "
        "ask POST /uploads/{upload_id}/parts for fresh ones)"
    )


class UploadPartDone(DeferredModel):
    model_config = ConfigDict(extra="forbid")

    part_number: JsonInt = Field(ge=1, le=10000)
    etag: str = Field(min_length=1, max_length=128, description="the ETag header the part's PUT answered")


class UploadCompleteRequest(DeferredModel):
    """POST /uploads/{upload_id}/complete: every part's ETag (an empty list for a single-PUT upload)."""

    model_config = ConfigDict(extra="forbid", title="UploadCompleteRequest")

    parts: list[UploadPartDone] = Field(default_factory=list, max_length=1000)


class UploadCompleted(DeferredModel):
    model_config = ConfigDict(title="UploadCompleted")

    upload_id: str
    kind: Literal["workdir", "file_mounts"]
    size: int
    status: Literal["complete"]


class OutputFile(DeferredModel):
    path: str = Field(description="relative to the job's outputs (or checkpoints) folder, '/'-separated")
    size: int
    last_modified: dt.datetime
    url: str = Field(description="a presigned GET of the file, valid until expires_at at the latest")


class OutputListing(DeferredModel):
    """GET /jobs/{job_id}/outputs: the files the job's instance stored, in key order."""

    model_config = ConfigDict(title="OutputListing")

    job_id: str
    kind: Literal["outputs", "checkpoints"]
    files: list[OutputFile]
    expires_at: dt.datetime = Field(description="the URLs stop working at the latest then (at most an hour)")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


# -- limits and usage (handlers/api_admission.py; docs/budgets.md) ------------------------------------------------


class ProviderUsage(DeferredModel):
    provider_id: str
    spent_usd: float = 0.0
    jobs: int = 0


class Usage(DeferredModel):
    """GET /usage: a team's month. spent_usd is the sum of the costs of its jobs that ended; reserved_usd the worst
    cases of its jobs still admitted (booked to the month they were submitted in)."""

    team_id: str
    month: str = Field(description="YYYY-MM (UTC)")
    spent_usd: float
    reserved_usd: float
    budget_usd: float | None = Field(description="the monthly budget, null without one")
    remaining_usd: float | None = Field(description="budget − spent − reserved, null without a budget")
    active_jobs: int = Field(description="jobs admitted and not ended (each holds one instance slot)")
    queued_jobs: int
    gpu_hours_by_type: dict[str, float]
    jobs_by_state: dict[str, int] = Field(description="the month's jobs that ended, by final state")
    providers: list[ProviderUsage]


class UsageList(DeferredModel):
    """GET /usage with an admin token: every team's month."""

    teams: list[Usage]
