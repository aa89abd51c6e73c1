"""Validate (the workflow's first step): turn any of the three kinds of input into a LAUNCHING job and a plan.

- the API's input `{"source": "api", "job_id", "team_id"}`: the job is already recorded (PENDING);
- a Step Functions console execution: `{"team_id", "provider_id", <task spec fields> | "task": {...},
  ["job_id" | "idempotency_key"]}`: the job is recorded here, its id fixed by the given job id, the idempotency key,
  or the execution's name, so a retried step never records two jobs;
- an automation event (EventBridge `Job Submission`, delivered whole): the same fields in `detail`; the job id comes
  from the event id (EventBridge may deliver an event twice: the second execution stops as a duplicate).
A spec that cannot run is recorded FAILED / INVALID_SPEC (when there is a team and provider to record it under) and
the execution fails with an error that says what to change.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from controlplane.core import catalog, userdata
from controlplane.core.errors import (
    DuplicateSubmission,
    InvalidSpec,
    InvalidSubmission,
    JobNotActive,
    describe_validation_problems,
)
from controlplane.core.ids import job_id_for_idempotency_key
from controlplane.core.images import ImageFamily, family_for_instance
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.markets import UseSpot, submission_pricing
from controlplane.core.models import Job, Provider, check_team_id, utcnow
from controlplane.core.ports import JobStore, ProviderStore
from controlplane.core.spec import TaskSpec, check_spec_size
from controlplane.service.failures import fail_job

SUBMISSION_DETAIL_TYPE = "Job Submission"
_META_FIELDS = frozenset({"team_id", "provider_id", "job_id", "idempotency_key", "source", "task"})
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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


def _derived_job_id(team_id: str, kind: str, identity: str) -> str:
    return "job-" + hashlib.sha256(f"{team_id}\x00{kind}\x00{identity}".encode()).hexdigest()[:20]


class IntakeService:
    def __init__(self, jobs: JobStore, providers: ProviderStore) -> None:
        self.jobs = jobs
        self.providers = providers

    def validate(self, raw: Any, execution_name: str | None, execution_arn: str | None) -> Plan:
        if not isinstance(raw, dict):
            raise InvalidSubmission("the execution input must be a JSON object (see README, 'Workflow input')")
        if raw.get("source") == "api" and "job_id" in raw:
            job = self._api_job(raw)
        elif "detail-type" in raw and "detail" in raw:
            if raw.get("detail-type") != SUBMISSION_DETAIL_TYPE:
                raise InvalidSubmission(f"events of detail-type {raw.get('detail-type')!r} are not job submissions")
            if not isinstance(raw["detail"], dict) or not raw.get("id"):
                raise InvalidSubmission("a Job Submission event needs an id and an object detail")
            job = self._record(raw["detail"], "event", ("event", str(raw["id"])), execution_arn)
        else:
            identity = ("execution", execution_name) if execution_name else None
            job = self._record(raw, "console", identity, execution_arn)
        return self._plan(job, execution_arn)

    # -- the three inputs -----------------------------------------------------------------------------------

    def _api_job(self, raw: dict[str, Any]) -> Job:
        job = self.jobs.get(str(raw["job_id"]))
        if job is None or job.team_id != raw.get("team_id"):
            raise InvalidSubmission(f"job {raw['job_id']} does not exist for team {raw.get('team_id')}")
        return job

    def _record(
        self, raw: dict[str, Any], source: str, identity: tuple[str, str] | None, execution_arn: str | None
    ) -> Job:
        team_id, provider = self._owner(raw)
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
        task = (
            raw.get("task")
            if isinstance(raw.get("task"), dict)
            else {k: v for k, v in raw.items() if k not in _META_FIELDS}
        )
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
        region = spec.resources.region or provider.region
        try:
            selection = catalog.get().select(spec.resources, region)
            userdata.check_spec_fits(job_id, team_id, selection.instance_type, spec)
        except InvalidSpec as error:
            self._record_invalid(
                Job.model_validate(base | {"spec": spec, "name": spec.name, "region": region}), error.message
            )
        pricing = submission_pricing(spec.resources.use_spot, selection.instance_type, selection.hourly_price)
        job, _ = self.jobs.create(
            Job.model_validate(
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
        )
        return job

    def _owner(self, raw: dict[str, Any]) -> tuple[str, Provider]:
        team_id, provider_id = raw.get("team_id"), raw.get("provider_id")
        if not isinstance(team_id, str) or not isinstance(provider_id, str):
            raise InvalidSubmission(
                "a workflow submission needs team_id and provider_id (strings) next to the task spec "
                "(see README, 'Workflow input')"
            )
        try:
            check_team_id(team_id)
        except ValueError as error:
            raise InvalidSubmission(str(error)) from None
        provider = self.providers.get(team_id, provider_id)
        if provider is None:
            raise InvalidSubmission(f"provider {provider_id} does not exist in team {team_id}")
        return team_id, provider

    @staticmethod
    def _job_id(raw: dict[str, Any], team_id: str, identity: tuple[str, str] | None) -> str:
        given, key = raw.get("job_id"), raw.get("idempotency_key")
        if given is not None:
            if not isinstance(given, str) or not _JOB_ID.fullmatch(given):
                raise InvalidSubmission(
                    "job_id must be 1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
                )
            return given
        if key is not None:
            if not isinstance(key, str) or not 1 <= len(key) <= 255:
                raise InvalidSubmission("idempotency_key must be a string of 1-255 characters")
            return job_id_for_idempotency_key(team_id, key)
        if identity is None:
            raise InvalidSubmission("give a job_id (the input has no execution name to derive one from)")
        return _derived_job_id(team_id, *identity)

    def _record_invalid(self, job: Job, message: str) -> NoReturn:
        """Keep a record of the rejected submission (FAILED / INVALID_SPEC) so users see why, then fail the step."""
        created, _ = self.jobs.create(job)
        fail_job(self.jobs, created.job_id, FailureReason.INVALID_SPEC, message)
        raise InvalidSpec(message)

    # -- the plan -------------------------------------------------------------------------------------------

    def _plan(self, job: Job, execution_arn: str | None) -> Plan:
        if job.status.terminal:
            raise JobNotActive(f"job {job.job_id} is already {job.status}; nothing to launch")
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
