"""Validate (the workflow's first step): turn any of the three kinds of input into a LAUNCHING job and a plan.

- the API's input `{"source": "api", "job_id", "team_id"}`: the job is already recorded (PENDING), spec and all, so
  the execution input carries ids only (no env value reaches Step Functions' execution history);
- a Step Functions console execution (an administrator's surface: whoever may StartExecution may act for any
  team): `{"team_id", "provider_id", <task spec fields> | "task": {...}, ["idempotency_key"]}`;
- an automation event (EventBridge `Job Submission`, delivered whole): the team is the one its `source` names,
  `ec2jobs.team.<team_id>` (an administrator's IAM policy lets each team's automation put that source only); the
  detail holds `provider_id`, the spec and optionally `idempotency_key`; a `team_id` in the detail must be that team.
Job ids are never chosen by the sender (core/ids.py): the idempotency key, the event id or the execution name,
hashed with the team, so a retried step or a redelivered event never records two jobs, and no submission can take
an id another team's submission maps to.
A spec that cannot run is recorded FAILED / INVALID_SPEC and the execution fails with a sentence saying what to
change. Any refused console/event submission is described by `reject` (a FAILED job where the team is known; the
handler puts a `Job Submission Rejected` event, docs/events.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from controlplane.core import catalog, userdata
from controlplane.core.admission import OverLimit
from controlplane.core.errors import (
    DomainError,
    DuplicateSubmission,
    InvalidSpec,
    InvalidSubmission,
    JobNotActive,
    describe_validation_problems,
)
from controlplane.core.ids import (
    TEAM_SOURCE_PREFIX,
    job_id_for_idempotency_key,
    job_id_for_submission,
    team_of_event_source,
)
from controlplane.core.images import ImageFamily, family_for_instance
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.markets import UseSpot, submission_pricing
from controlplane.core.models import Job, Provider, check_team_id, utcnow
from controlplane.core.ports import Admission, JobStore, ProviderStore
from controlplane.core.spec import TaskSpec, check_spec_size
from controlplane.service.failures import fail_job
from controlplane.service.uploads import UploadReader, check_spec_uploads

SUBMISSION_DETAIL_TYPE = "Job Submission"
NOT_AN_OBJECT = "the execution input must be a JSON object (see docs/events.md, 'Console executions')"
_META_FIELDS = frozenset({"team_id", "provider_id", "job_id", "idempotency_key", "source", "task"})
_ECHO = 64  # at most this much of a sender's value is quoted back in a sentence


@dataclass(frozen=True)
class Plan:
    """The workflow state every later step receives."""

    job_id: str
    team_id: str
    provider_id: str
    region: str
    instance_type: str
    image_family: str
    use_spot: UseSpot

    def as_state(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Rejection:
    """A refused console/event submission, as the Job Submission Rejected event tells it (docs/events.md). It holds
    no spec, env value or secret: the reason is the validator's sentence, which never quotes spec values."""

    reason: str
    code: str
    submission: str  # "event" or "console"
    team_id: str | None  # the team it was for, when known (an event's source; a console input's existing team)
    job_id: str | None  # the FAILED job recorded for that team, readable through the API
    idempotency_key: str | None
    event_id: str | None
    event_source: str | None
    execution_arn: str | None


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _ECHO else text[:_ECHO] + "…"


def _is_event(raw: dict[str, Any]) -> bool:
    return "detail-type" in raw and "detail" in raw


def _valid_team(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return check_team_id(value)
    except ValueError:
        return None


def _valid_key(value: Any) -> str | None:
    return value if isinstance(value, str) and 1 <= len(value) <= 255 else None


class IntakeService:
    def __init__(
        self,
        jobs: JobStore,
        providers: ProviderStore,
        uploads: UploadReader | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.admission = admission
        self.jobs = jobs
        self.providers = providers
        self.uploads = uploads  # the team's uploads, which workdir/file_mounts may name (service/uploads.py)

    def validate(self, raw: Any, execution_name: str | None, execution_arn: str | None) -> Plan:
        if not isinstance(raw, dict):
            raise InvalidSubmission(NOT_AN_OBJECT)
        if raw.get("source") == "api" and "job_id" in raw:
            job = self._api_job(raw)
        elif _is_event(raw):
            team_id = self._event_team(raw)
            job = self._record(raw["detail"], team_id, "event", ("event", str(raw["id"])), execution_arn)
        else:
            identity = ("execution", execution_name) if execution_name else None
            job = self._record(raw, self._console_team(raw), "console", identity, execution_arn)
        return self._plan(job, execution_arn)

    def reject(
        self, raw: Any, error: DomainError, execution_name: str | None, execution_arn: str | None
    ) -> Rejection | None:
        """Validate refused this input: where the team is known, make sure a FAILED job records why (the one Validate
        recorded for an invalid spec, or a new one), and describe the rejection. None for the API's own inputs (the
        API answered that request; the job's state changes tell the rest)."""
        if isinstance(raw, dict) and raw.get("source") == "api" and "job_id" in raw:
            return None
        event = isinstance(raw, dict) and _is_event(raw)
        body: dict[str, Any] = {}
        event_id = event_source = team_id = None
        if event:
            assert isinstance(raw, dict)
            body = raw["detail"] if isinstance(raw["detail"], dict) else {}
            event_id = str(raw["id"])[:128] if raw.get("id") else None
            event_source = str(raw.get("source"))[:256] if isinstance(raw.get("source"), str) else None
            team_id = _valid_team(team_of_event_source(raw.get("source")))
        elif isinstance(raw, dict):
            body = raw
            named = _valid_team(raw.get("team_id"))
            team_id = named if named and self.providers.list(named) else None  # a team that exists
        key = _valid_key(body.get("idempotency_key"))
        job_id = None
        if team_id is not None:
            if key is not None:
                job_id = job_id_for_idempotency_key(team_id, key)
            elif event and isinstance(raw, dict) and raw.get("id"):
                job_id = job_id_for_submission(team_id, "event", str(raw["id"]))  # as Validate derives it
            elif not event and execution_name:
                job_id = job_id_for_submission(team_id, "execution", execution_name)
        if job_id is not None:
            kind = "event" if event else "console"
            job_id = self._failed_record(job_id, team_id, body, error.message, kind, execution_arn)
        return Rejection(
            reason=error.message,
            code=error.code,
            submission="event" if event else "console",
            team_id=team_id,
            job_id=job_id,
            idempotency_key=key,
            event_id=event_id,
            event_source=event_source,
            execution_arn=execution_arn,
        )

    def _failed_record(
        self, job_id: str, team_id: Any, body: dict[str, Any], message: str, source: str, execution_arn: str | None
    ) -> str | None:
        """The team's FAILED record of a refused submission: the existing one (an invalid spec Validate recorded),
        or a new one. None if the id holds another team's job (never touched)."""
        existing = self.jobs.get(job_id)
        if existing is not None:
            return job_id if existing.team_id == team_id else None
        provider_id, name = body.get("provider_id"), body.get("name")
        now = utcnow()
        job = Job.model_validate(
            {
                "job_id": job_id,
                "team_id": team_id,
                "provider_id": provider_id if isinstance(provider_id, str) and len(provider_id) <= 64 else "",
                "region": "",  # no provider was resolved
                "name": name if isinstance(name, str) and len(name) <= 100 else None,
                "source": source,
                "execution_arn": execution_arn,
                "created_at": now,
                "updated_at": now,
            }
        )
        stored, created = self.jobs.create(job)
        if created:
            fail_job(self.jobs, job_id, FailureReason.INVALID_SPEC, message)
        return job_id if stored.team_id == team_id else None  # created meanwhile by another submission: untouched

    # -- the three inputs -----------------------------------------------------------------------------------

    def _api_job(self, raw: dict[str, Any]) -> Job:
        job = self.jobs.get(str(raw["job_id"]))
        if job is None or job.team_id != raw.get("team_id"):
            raise InvalidSubmission(f"job {raw['job_id']} does not exist for team {raw.get('team_id')}")
        return job

    @staticmethod
    def _event_team(raw: dict[str, Any]) -> str:
        """The team a Job Submission event submits for: the one its source names (IAM-enforced, docs/events.md)."""
        if raw.get("detail-type") != SUBMISSION_DETAIL_TYPE:
            raise InvalidSubmission(f"events of detail-type {_quoted(raw.get('detail-type'))} are not job submissions")
        if not isinstance(raw["detail"], dict) or not raw.get("id"):
            raise InvalidSubmission("a Job Submission event needs an id and an object detail")
        named = team_of_event_source(raw.get("source"))
        if named is None:
            raise InvalidSubmission(
                f"a Job Submission event's source must be {TEAM_SOURCE_PREFIX}<team_id>, the team it submits for "
                f"(see docs/events.md); this one's source is {_quoted(raw.get('source'))}"
            )
        try:
            team_id = check_team_id(named)
        except ValueError as error:
            raise InvalidSubmission(f"the event's source names no valid team: {error}") from None
        claimed = raw["detail"].get("team_id")
        if claimed is not None and claimed != team_id:
            raise InvalidSubmission(
                f"this event's source submits for team {team_id}, but its detail names team_id {_quoted(claimed)}: "
                "an event submits only for the team its source names (see docs/events.md)"
            )
        return team_id

    @staticmethod
    def _console_team(raw: dict[str, Any]) -> str:
        team_id = raw.get("team_id")
        if not isinstance(team_id, str) or not isinstance(raw.get("provider_id"), str):
            raise InvalidSubmission(
                "a workflow submission needs team_id and provider_id (strings) next to the task spec "
                "(see docs/events.md, 'Console executions')"
            )
        try:
            return check_team_id(team_id)
        except ValueError as error:
            raise InvalidSubmission(str(error)) from None

    def _record(
        self,
        raw: dict[str, Any],
        team_id: str,
        source: str,
        identity: tuple[str, str] | None,
        execution_arn: str | None,
    ) -> Job:
        provider = self._provider(team_id, raw.get("provider_id"))
        job_id = self._job_id(raw, team_id, identity)
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.team_id != team_id:
                raise InvalidSubmission(f"job id {job_id} is already used by another team; choose another job_id")
            if existing.execution_arn and execution_arn and existing.execution_arn != execution_arn:
                raise DuplicateSubmission(
                    f"job {job_id} was already submitted (execution {existing.execution_arn}); this one stops"
                )
            return existing
        # A `task` that is not a mapping reaches TaskSpec as it is, which says so ("the task spec is a string…").
        task = raw["task"] if "task" in raw else {k: v for k, v in raw.items() if k not in _META_FIELDS}
        now = utcnow()
        base: dict[str, Any] = {
            "job_id": job_id,
            "team_id": team_id,
            "provider_id": provider.provider_id,
            "region": provider.region,
            "source": source,
            "execution_arn": execution_arn,
            "created_at": now,
            "updated_at": now,
        }
        try:
            spec = TaskSpec.model_validate(task)
        except ValidationError as error:
            summary, _ = describe_validation_problems(error.errors())
            self._record_invalid(Job.model_validate(base), f"The task spec is not valid: {summary}")
        try:
            check_spec_size(spec)
        except InvalidSpec as error:  # recorded without the spec: the job record could not hold it
            self._record_invalid(Job.model_validate(base | {"name": spec.name}), error.message)
        region = (spec.resources.regions or (provider.region,))[0]
        try:
            selection = catalog.get().select_for(spec.resources, provider.region)
            userdata.check_spec_fits(job_id, team_id, selection.instance_type, spec)
            check_spec_uploads(self.uploads, team_id, spec)
        except InvalidSpec as error:
            self._record_invalid(
                Job.model_validate(base | {"spec": spec, "name": spec.name, "region": region}), error.message
            )
        pricing = submission_pricing(spec.resources.use_spot, selection.instance_type, selection.hourly_price)
        draft = Job.model_validate(
            base
            | {
                "spec": spec,
                "name": spec.name,
                "region": selection.region,
                "instance_type": selection.instance_type,
                "hourly_price": pricing.hourly_price,
                "on_demand_price": pricing.on_demand_price,
                "use_spot": spec.resources.use_spot,
                "notes": [*selection.notes, *pricing.notes],
            }
        )
        if self.admission is not None:  # the team's limits (docs/budgets.md): admitted, queued, or refused
            try:
                decision = self.admission.admit_new(draft)
            except OverLimit as error:
                raise InvalidSubmission(error.message) from None
            if not decision.admitted:
                draft = draft.model_copy(update={"status": JobStatus.QUEUED, "status_detail": decision.reason})
        job, _ = self.jobs.create(draft)
        return job

    def _provider(self, team_id: str, provider_id: Any) -> Provider:
        if not isinstance(provider_id, str) or not 1 <= len(provider_id) <= 64:
            raise InvalidSubmission("a submission needs provider_id: the id of one of the team's providers")
        provider = self.providers.get(team_id, provider_id)
        if provider is None:
            raise InvalidSubmission(f"provider {provider_id} does not exist in team {team_id}")
        return provider

    @staticmethod
    def _job_id(raw: dict[str, Any], team_id: str, identity: tuple[str, str] | None) -> str:
        key = raw.get("idempotency_key")
        if "job_id" in raw:
            raise InvalidSubmission(
                "job_id cannot be chosen in a console or event submission: give idempotency_key instead (the job "
                "id derives from it and the team, so retrying with the same key never makes two jobs)"
            )
        if key is not None:
            if _valid_key(key) is None:
                raise InvalidSubmission("idempotency_key must be a string of 1-255 characters")
            return job_id_for_idempotency_key(team_id, key)
        if identity is None:
            raise InvalidSubmission("give an idempotency_key (the input has no execution name to derive an id from)")
        return job_id_for_submission(team_id, *identity)

    def _record_invalid(self, job: Job, message: str) -> NoReturn:
        """Keep a record of the rejected submission (FAILED / INVALID_SPEC) so users see why, then fail the step."""
        created, _ = self.jobs.create(job)
        fail_job(self.jobs, created.job_id, FailureReason.INVALID_SPEC, message)
        raise InvalidSpec(message)

    # -- the plan -------------------------------------------------------------------------------------------

    def _plan(self, job: Job, execution_arn: str | None) -> Plan:
        if job.status.terminal:
            raise JobNotActive(f"job {job.job_id} is already {job.status}; nothing to launch")
        if job.status == JobStatus.QUEUED:  # it launches in an execution of its own once admitted
            raise JobNotActive(f"job {job.job_id} is QUEUED ({job.status_detail}); it launches once admitted")
        if job.spec is None or job.instance_type is None:  # cannot happen for an active job; be explicit
            fail_job(self.jobs, job.job_id, FailureReason.INVALID_SPEC, "the job has no valid task spec")
            raise InvalidSpec("the job has no valid task spec")
        if job.status == JobStatus.PENDING:
            if self.providers.get(job.team_id, job.provider_id) is None:
                message = f"provider {job.provider_id} was deleted before the job launched"
                fail_job(self.jobs, job.job_id, FailureReason.CREDENTIALS, message)
                raise InvalidSubmission(message)
            try:
                spec = job.spec
                check_spec_size(spec)
                userdata.check_spec_fits(job.job_id, job.team_id, job.instance_type, spec)
            except InvalidSpec as error:
                fail_job(self.jobs, job.job_id, FailureReason.INVALID_SPEC, error.message)
                raise
            fields = {} if job.execution_arn or not execution_arn else {"execution_arn": execution_arn}
            job = self.jobs.transition(job.job_id, JobStatus.LAUNCHING, expected=JobStatus.PENDING, fields=fields)
        instance = catalog.get().instances[job.instance_type] if job.instance_type else None
        assert job.instance_type is not None
        assert job.spec is not None
        return Plan(
            job_id=job.job_id,
            team_id=job.team_id,
            provider_id=job.provider_id,
            region=job.region,
            instance_type=job.instance_type,
            image_family=str(family_for_instance(instance) if instance else ImageFamily.CPU),
            use_spot=job.spec.resources.use_spot,
        )
