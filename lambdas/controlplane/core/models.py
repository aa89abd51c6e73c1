"""Domain records (what the store keeps) and the API's request bodies."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from controlplane.core import catalog
from controlplane.core.inputs import check_secret_names
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.markets import Market, UseSpot
from controlplane.core.spec import TaskSpec

TEAM_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TEAM_ID_RULE = "1-32 characters: lowercase letters, digits and '-', starting with a letter or digit"
_PROVIDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_ACCESS_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
# a customer managed policy's name, or its ARN (issue 13 section 4: the hardened provider policy's boundary)
_BOUNDARY = re.compile(r"(arn:aws[a-z-]*:iam::\d{12}:policy/)?[\w+=,.@/-]{1,128}")
REDACTED = "<redacted>"
# Ids the API accepts in a path or body before they become DynamoDB keys (what intake accepts for a job_id).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_ID_LENGTH = 64
MAX_SECRETS = 50
MAX_SECRETS_BYTES = 64 * 1024  # sealed in the job record (a DynamoDB item of at most 400 KB)


def _schema(**keywords: Any) -> dict[str, Any]:
    """JSON Schema keywords for the OpenAPI document only: the field's validator does the checking (it strips
    whitespace first, so a pydantic `pattern` would refuse what the validator accepts)."""
    return keywords


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_team_id(team_id: str) -> str:
    """Team ids end up in AWS resource names (`transformerlab-ec2-profile-<team>` must fit IAM's 64 characters)."""
    if not TEAM_ID.fullmatch(team_id):
        raise ValueError(f"team id {team_id!r} is not valid: {TEAM_ID_RULE}")
    return team_id


class Provider(BaseModel):
    """An AWS account + region jobs run in. The secret key lives in Secrets Manager, never here."""

    model_config = ConfigDict(frozen=True)

    provider_id: str
    team_id: str
    name: str
    region: str
    account_id: str
    user_arn: str
    access_key_hint: str
    secret_arn: str
    created_at: dt.datetime
    permissions_boundary: str | None = None  # the boundary its roles must carry (hardened policy); None: detect

    def public(self) -> dict[str, Any]:
        return {
            "provider_id": self.provider_id,
            "name": self.name,
            "region": self.region,
            "account_id": self.account_id,
            "user_arn": self.user_arn,
            "access_key_id": self.access_key_hint,
            "permissions_boundary": self.permissions_boundary,
            "created_at": self.created_at.isoformat(),
        }


# How a job's status_detail is shown among its notes, by status (other states keep it as a field only).
_DETAIL_PREFIX = {
    JobStatus.QUEUED: "queued",
    JobStatus.PROVISIONING: "not running yet",
    JobStatus.RECOVERING: "recovering",
    JobStatus.WAITING_CAPACITY: "waiting for capacity",
}


class Attempt(BaseModel):
    """One attempt of a job: its instance, where and how it ran, why it ended and what it cost (core/recovery.py).
    The job keeps the attempts that ended and relaunched in `attempts`; the current one is in its own fields."""

    model_config = ConfigDict(frozen=True)

    attempt: int
    instance_id: str | None = None
    instance_type: str | None = None
    region: str
    availability_zone: str | None = None
    market: Market | None = None
    hourly_price: float | None = None
    launched_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    end_reason: str | None = None  # a FailureReason, or SUCCEEDED / CANCELLED for a job's last attempt
    exit_code: int | None = None
    message: str | None = None
    billed_seconds: int | None = None
    cost_estimate: float | None = None


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    job_id: str
    team_id: str
    provider_id: str
    region: str
    name: str | None = None
    spec: TaskSpec | None = None  # None only for a workflow submission whose spec was invalid (FAILED/INVALID_SPEC)
    status: JobStatus = JobStatus.PENDING
    failure_reason: FailureReason | None = None
    failure_message: str | None = None
    exit_code: int | None = None
    instance_id: str | None = None
    instance_type: str | None = None
    instance_state: str | None = None
    hourly_price: float | None = None  # USD/h of the job's market: on-demand list price; None on spot (not recorded)
    billed_seconds: int | None = None  # set when the job ends: launch → end, at least EC2's one-minute minimum
    cost_estimate: float | None = None  # billed_seconds at hourly_price (USD)
    use_spot: UseSpot = False  # as requested: true, false or "auto"
    market: Market | None = None  # the market the instance was launched in (set by Launch)
    launch_market: Market | None = None  # the market Launch is trying (a retried step resumes there)
    on_demand_price: float | None = None  # the catalog's on-demand list price: what spot costs at most
    image_id: str | None = None
    availability_zone: str | None = None
    launch_zone: str | None = None  # the zone Launch is trying (a retried step resumes there)
    launch_round: int = 0  # RunInstances retries after IAM propagation (each its own ClientToken; a retry resumes)
    ssh_host_key: str | None = None  # the public half of the job's pinned SSH host key
    instance_address: str | None = None  # the address the relay reached it at (kept if provider keys are revoked)
    relay_owner: str | None = None  # the relay loop (workflow execution) holding the relay lease
    relay_lease_until: dt.datetime | None = None  # a live relay loop renews it; past it the reconciler restarts one
    relay_restarts: int = 0  # relay loops the reconciler started after one died
    relay_restarted_at: dt.datetime | None = None
    notes: list[str] = Field(default_factory=list)
    status_detail: str | None = None  # while PROVISIONING: why it is not RUNNING yet (no address, SSH not up, ...)
    source: str = "api"
    execution_arn: str | None = None
    request_hash: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    launched_at: dt.datetime | None = None
    deadline_at: dt.datetime | None = None  # launched_at + max runtime + grace: past it the reconciler terminates
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    upload_failures: list[str] = Field(default_factory=list)  # "outputs"/"checkpoints" whose last upload failed
    stored_scripts: dict[str, str] = Field(default_factory=dict)  # setup/run kept in the artifacts bucket: name → key
    secret_names: list[str] = Field(default_factory=list)  # the job's secrets (values only sealed, below)
    sealed_secrets: str | None = Field(default=None, repr=False)  # core/sealing.py: never shown, never in clear
    attempt: int = 1  # the current attempt (core/recovery.py); its instance is instance_id
    attempts: list[Attempt] = Field(default_factory=list)  # the attempts that ended and relaunched, in order
    launch_started_at: dt.datetime | None = None  # when the current attempt's launch began (attempt 2 on)
    waiting_since: dt.datetime | None = None  # WAITING_CAPACITY since (max_wait_minutes counts from here)
    capacity_retry_at: dt.datetime | None = None  # WAITING_CAPACITY: when the workflow tries again
    regions_tried: list[str] = Field(default_factory=list)  # this capacity round: regions with no capacity
    capacity_round: int = 0  # walks over every region that found no capacity (WAITING_CAPACITY rounds)
    log_marker_at: int | None = None  # the log offset of the current attempt's marker line (attempt 2 on)
    version: int = 1

    def current_attempt(self) -> Attempt:
        """The current attempt as an Attempt record (ended when the job did)."""
        terminal = self.status.terminal
        reason = None
        if terminal:
            reason = str(self.failure_reason) if self.failure_reason else str(self.status)
        earlier = sum(a.billed_seconds or 0 for a in self.attempts)
        earlier_cost = sum(a.cost_estimate or 0.0 for a in self.attempts)
        own_seconds = (self.billed_seconds - earlier) if terminal and self.billed_seconds is not None else None
        own_cost = None
        if terminal and self.cost_estimate is not None:
            own_cost = round(self.cost_estimate - earlier_cost, 4)
        return Attempt(
            attempt=self.attempt,
            instance_id=self.instance_id,
            instance_type=self.instance_type,
            region=self.region,
            availability_zone=self.availability_zone,
            market=self.market,
            hourly_price=self.hourly_price,
            launched_at=self.launched_at,
            ended_at=self.ended_at if terminal else None,
            end_reason=reason,
            exit_code=self.exit_code if terminal else None,
            message=self.failure_message if terminal else None,
            billed_seconds=own_seconds if own_seconds is None or own_seconds >= 0 else None,
            cost_estimate=own_cost,
        )

    def public(self) -> dict[str, Any]:
        """What users see: everything except idempotency bookkeeping. Env values are redacted (they often carry
        tokens such as HF_TOKEN); the names stay visible."""
        body = self.model_dump(
            mode="json",
            exclude={"request_hash", "version", "sealed_secrets", "secret_names", "log_marker_at", "attempts"},
        )
        recorded = bool(self.attempts) and self.attempts[-1].attempt == self.attempt  # ended while RECOVERING
        shown = self.attempts if recorded else [*self.attempts, self.current_attempt()]
        body["attempts"] = [a.model_dump(mode="json") for a in shown]
        prefix = _DETAIL_PREFIX.get(self.status)
        if prefix and self.status_detail:
            body["notes"] = [*self.notes, f"{prefix}: {self.status_detail}"]
        if self.upload_failures:
            areas = " and ".join(self.upload_failures)
            body["notes"] = [
                *body["notes"],
                f"the last upload of its {areas} failed after retries: what earlier syncs uploaded is kept (ec2jobs "
                "download lists it); the instance's wrapper.log has the error",
            ]
        if self.spec is not None:
            spec = self.spec.model_dump(mode="json", exclude_none=True)
            spec["envs"] = {name: REDACTED for name in self.spec.envs}
            if self.secret_names:
                spec["secrets"] = {name: REDACTED for name in self.secret_names}
            body["spec"] = spec
        return body


class BootstrapRecord(BaseModel):
    """What bootstrap created (or found) for a team in one provider account and region; cached in DynamoDB."""

    model_config = ConfigDict(frozen=True)

    provider_id: str
    team_id: str
    region: str
    security_group_id: str
    key_name: str | None  # None when a key pair of our name exists that we do not hold (see README)
    instance_profile_name: str
    instance_profile_arn: str
    role_name: str
    permissions_boundary_arn: str | None = None  # the boundary the role carries (hardened provider policy)
    notes: list[str] = Field(default_factory=list)
    created_at: dt.datetime
    schema_version: int = 1


class ProviderCreate(BaseModel):
    """POST /providers. The secret is a SecretStr: it never appears in a repr, a log line or an error."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="a display name, unique within the team",
        json_schema_extra=_schema(pattern=f"^{_PROVIDER_NAME.pattern}$"),
    )
    region: str = Field(
        description="default AWS region for this provider's jobs, e.g. us-east-1",
        json_schema_extra=lambda schema: schema.update(enum=list(catalog.get().regions)),  # read when documented
    )
    access_key_id: str = Field(
        description="the IAM user's access key id", json_schema_extra=_schema(pattern=f"^{_ACCESS_KEY_ID.pattern}$")
    )
    secret_access_key: SecretStr = Field(
        description="the IAM user's secret access key (write-only)", json_schema_extra=_schema(pattern=r"\S")
    )
    permissions_boundary: str | None = Field(
        default=None,
        description="the permissions boundary (policy name or ARN) the hardened provider policy requires on the "
        "roles ec2jobs creates, e.g. transformerlab-ec2-boundary; omit it to have ec2jobs detect the policy",
        json_schema_extra=_schema(pattern=f"^({_BOUNDARY.pattern})?$"),
    )

    @field_validator("permissions_boundary")
    @classmethod
    def _boundary(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not _BOUNDARY.fullmatch(value.strip()):
            raise ValueError("permissions_boundary must be an IAM policy name or a policy ARN")
        return value.strip()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _PROVIDER_NAME.fullmatch(value.strip()):
            raise ValueError("name must be 1-64 characters: letters, digits, spaces, '.', '_' or '-'")
        return value.strip()

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        return catalog.get().check_region(value.strip())

    @field_validator("access_key_id")
    @classmethod
    def _access_key_id(cls, value: str) -> str:
        value = value.strip()
        if not _ACCESS_KEY_ID.fullmatch(value):
            raise ValueError(
                "access_key_id does not look like an AWS access key id (16+ uppercase letters and digits, "
                "e.g. AKIA...); copy it from IAM → Users → Security credentials"
            )
        return value

    @field_validator("secret_access_key")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("secret_access_key must not be empty")
        return SecretStr(value.get_secret_value().strip())


class JobRequest(TaskSpec):
    """POST /jobs: the task spec plus the provider to run it with."""

    provider_id: str = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description="the provider (AWS account) to launch in",
    )

    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="values exported to setup and run like envs, but sealed at rest, delivered over SSH and never "
        "shown back (the job shows their names); only here, never in event or console input",
    )

    @field_validator("secrets", mode="before")
    @classmethod
    def _secrets(cls, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ValueError("secrets must be a mapping of NAME: value")
        if len(raw) > MAX_SECRETS:
            raise ValueError(f"secrets has {len(raw)} entries; at most {MAX_SECRETS} are allowed")
        missing = [name for name, value in raw.items() if value is None]
        if missing:
            raise ValueError(
                f"secrets {', '.join(map(str, missing))} {'has' if len(missing) == 1 else 'have'} no value: pass it "
                f"at submit time with `ec2jobs submit --secret {missing[0]}` (from your environment)"
            )
        values: dict[str, str] = {}
        for name, value in raw.items():
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError(f"secrets value of {name} must be a string without NUL bytes")
            values[str(name)] = value
        if sum(len(n) + len(v.encode()) for n, v in values.items()) > MAX_SECRETS_BYTES:
            raise ValueError(f"secrets hold more than {MAX_SECRETS_BYTES // 1024} KiB; keep large files in the workdir")
        return values

    @model_validator(mode="after")
    def _secret_names(self) -> JobRequest:
        check_secret_names(list(self.secrets), dict(self.envs))
        return self

    def task_spec(self) -> TaskSpec:
        """The spec without provider_id and secrets. Passes the validated field values through (no re-parse), so
        Resources keeps what the user typed for the GPU (the alias note depends on it)."""
        return TaskSpec.model_validate({name: getattr(self, name) for name in TaskSpec.model_fields})
