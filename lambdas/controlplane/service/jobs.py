"""Job submission and reads. Submitting validates the spec, picks the instance, records a PENDING job with its
price and starts the workflow; an Idempotency-Key makes a retried submission return the same job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from controlplane.core import catalog, userdata
from controlplane.core.errors import IdempotencyKeyReused, NotFound, TransitionRefused
from controlplane.core.ids import job_id_for_idempotency_key, new_job_id
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job, JobRequest, utcnow
from controlplane.core.ports import JobPage, JobStore, ProviderStore, WorkflowStarter

MAX_PAGE = 100


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # True when an Idempotency-Key matched an earlier submission


def request_fingerprint(request: JobRequest) -> str:
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobService:
    def __init__(self, jobs: JobStore, providers: ProviderStore, starter: WorkflowStarter) -> None:
        self.jobs = jobs
        self.providers = providers
        self.starter = starter

    def submit(self, team_id: str, request: JobRequest, idempotency_key: str | None = None) -> Submission:
        fingerprint = request_fingerprint(request)
        if idempotency_key:
            job_id = job_id_for_idempotency_key(team_id, idempotency_key)
            existing = self.jobs.get(job_id)
            if existing is not None:
                return Submission(self._replay(existing, fingerprint), replayed=True)
        else:
            job_id = new_job_id()

        provider = self.providers.get(team_id, request.provider_id)
        if provider is None:
            raise NotFound("provider", request.provider_id)
        spec = request.task_spec()
        selection = catalog.get().select(spec.resources, spec.resources.region or provider.region)
        userdata.check_fits(
            job_id,
            team_id,
            selection.instance_type,
            dict(spec.envs),
            spec.setup,
            spec.run,
            spec.max_runtime_minutes * 60,
        )
        now = utcnow()
        job, created = self.jobs.create(
            Job(
                job_id=job_id,
                team_id=team_id,
                provider_id=provider.provider_id,
                region=selection.region,
                name=spec.name,
                spec=spec,
                instance_type=selection.instance_type,
                hourly_price=selection.hourly_price,
                use_spot=spec.resources.use_spot,
                notes=list(selection.notes),
                request_hash=fingerprint,
                created_at=now,
                updated_at=now,
            )
        )
        if not created:  # a concurrent request with the same key won the insert
            return Submission(self._replay(job, fingerprint), replayed=True)
        return Submission(self._start(job), replayed=False)

    def _replay(self, job: Job, fingerprint: str) -> Job:
        if job.request_hash != fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; use a new key for a new job"
            )
        # The first attempt may have stored the job and then failed to start the workflow: finish that now.
        return self._start(job) if job.status == JobStatus.PENDING and not job.execution_arn else job

    def _start(self, job: Job) -> Job:
        execution_arn = self.starter.start(job)
        try:
            return self.jobs.update(job.job_id, {"execution_arn": execution_arn})
        except TransitionRefused:  # the workflow already finished the job (e.g. an invalid spec): show that
            return self.jobs.get(job.job_id) or job

    def get(self, team_id: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.team_id != team_id:  # another team's job is indistinguishable from a missing one
            raise NotFound("job", job_id)
        return job

    def list(self, team_id: str, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage:
        return self.jobs.list_for_team(team_id, status, max(1, min(limit, MAX_PAGE)), cursor)
