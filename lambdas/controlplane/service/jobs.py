"""Job submission and reads. Submitting validates the spec, picks the instance, records a PENDING job with its
price and starts the workflow; an Idempotency-Key makes a retried submission return the same job."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.core import bundle, catalog, logchunks, logpages, sealing, userdata
from controlplane.core.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidSpec,
    NotFound,
    TransitionRefused,
    UpstreamUnavailable,
)
from controlplane.core.ids import job_id_for_idempotency_key, new_job_id
from controlplane.core.lifecycle import JobStatus
from controlplane.core.logpages import PagePointer
from controlplane.core.markets import submission_pricing
from controlplane.core.models import Job, JobRequest, utcnow
from controlplane.core.ports import (
    Admission,
    JobPage,
    JobStore,
    LogProgress,
    ProviderStore,
    SecretStore,
    WorkflowStarter,
)
from controlplane.core.spec import check_spec_size
from controlplane.service.uploads import UploadReader, check_spec_uploads

MAX_PAGE = 100


@dataclass(frozen=True)
class Submission:
    job: Job
    replayed: bool  # True when an Idempotency-Key matched an earlier submission


def request_fingerprint(request: JobRequest) -> str:
    """The request's identity for Idempotency-Key replays: secret values are left out (only their names count),
    so the stored hash says nothing about them."""
    body = request.model_dump(mode="json", exclude={"secrets"}) | {"secret_names": sorted(request.secrets)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ScriptStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class LogPage:
    text: str
    next_cursor: str
    final: bool  # the job ended, nothing more will be relayed and this page reached the end: stop polling
    complete: bool  # final, and the log is whole (the relay read everything the instance wrote)


class LogReader(Protocol):
    def progress(self, job_id: str) -> LogProgress: ...
    def chunks(self, job_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]: ...
    def paged(self, job_id: str, pointer: PagePointer, start: int) -> bytes: ...


MAX_LOG_PAGE = 1024 * 1024
DEFAULT_LOG_PAGE = 256 * 1024
MIN_LOG_PAGE = 1024


class JobService:
    def __init__(
        self,
        jobs: JobStore,
        providers: ProviderStore,
        starter: WorkflowStarter,
        logs: LogReader | None = None,
        secrets: SecretStore | None = None,
        uploads: UploadReader | None = None,
        scripts: ScriptStore | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.admission = admission  # per-team limits and the queue (service/admission.py); None: no limits at all
        self.scripts = scripts  # the artifacts bucket, for setup/run too large for the job record
        self.jobs = jobs
        self.providers = providers
        self.starter = starter
        self.log_reader = logs
        self.secrets = secrets
        self.uploads = uploads  # the team's uploads, which workdir/file_mounts may name (service/uploads.py)

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
        spec, scripts = bundle.split_scripts(request.task_spec())  # megabyte scripts go to the bucket, not the item
        check_spec_size(spec)  # before anything else: a spec the job record cannot hold is never stored
        selection = catalog.get().select_for(spec.resources, provider.region)
        userdata.check_spec_fits(job_id, team_id, selection.instance_type, spec)
        self._check_resume_from(team_id, spec.resume_from)
        check_spec_uploads(self.uploads, team_id, spec)
        pricing = submission_pricing(spec.resources.use_spot, selection.instance_type, selection.hourly_price)
        now = utcnow()
        draft = Job(
            job_id=job_id,
            team_id=team_id,
            provider_id=provider.provider_id,
            region=selection.region,
            name=spec.name,
            spec=spec,
            instance_type=selection.instance_type,
            hourly_price=pricing.hourly_price,
            on_demand_price=pricing.on_demand_price,
            use_spot=spec.resources.use_spot,
            notes=[*selection.notes, *pricing.notes],
            request_hash=fingerprint,
            secret_names=sorted(request.secrets),
            created_at=now,
            updated_at=now,
        )
        queued: dict[str, Any] = {}
        if self.admission is not None:  # before anything is stored: a job that can never fit is refused here
            decision = self.admission.admit_new(draft)
            if not decision.admitted:
                queued = {"status": JobStatus.QUEUED, "status_detail": decision.reason}
        sealed = self._seal(team_id, job_id, request.secrets)
        stored_scripts = self._store_scripts(team_id, job_id, scripts)
        job, created = self.jobs.create(
            draft.model_copy(update={"sealed_secrets": sealed, "stored_scripts": stored_scripts, **queued})
        )
        if not created:  # a concurrent request with the same key won the insert
            return Submission(self._replay(job, fingerprint), replayed=True)
        if job.status == JobStatus.QUEUED:  # its workflow starts when it is admitted (service/admission.py)
            return Submission(job, replayed=False)
        return Submission(self._start(job), replayed=False)

    def _check_resume_from(self, team_id: str, resume_from: str | None) -> None:
        """resume_from names an earlier job of the same team (another team's is as unknown as a missing one)."""
        if resume_from is None:
            return
        earlier = self.jobs.get(resume_from)
        if earlier is None or earlier.team_id != team_id:
            raise InvalidSpec(f"resume_from: your team has no job {resume_from}")

    def _store_scripts(self, team_id: str, job_id: str, scripts: dict[str, str]) -> dict[str, str]:
        """Keep large setup/run text in the artifacts bucket (the relay hands it to the instance)."""
        if not scripts:
            return {}
        if self.scripts is None:
            raise InvalidSpec(
                f"setup and run are over {bundle.INLINE_SCRIPTS_BYTES // 1024} KiB together, and this deployment "
                "has no artifacts bucket to keep them in: put the long text in a script in your workdir"
            )
        keys = {}
        for name, text in scripts.items():
            keys[name] = bundle.script_key(team_id, job_id, name)
            self.scripts.put_bytes(keys[name], text.encode("utf-8"))
        return keys

    def _seal(self, team_id: str, job_id: str, values: dict[str, str]) -> str | None:
        if not values:
            return None
        if self.secrets is None:
            raise RuntimeError("JobService needs a SecretStore to seal secrets")
        return sealing.seal(self.secrets.team_key(team_id).host_key_seed, job_id, values)

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

    def logs(self, team_id: str, job_id: str, after: str | None, limit: int) -> LogPage:
        """Output from byte offset `after` (the previous page's next_cursor), at most `limit` bytes of it, as text,
        and fewer when the text needs much escaping (a page always fits Lambda's 6 MB response; docs/limits.md).
        `final` once the job ended, nothing more will be relayed and this page reaches the end; `complete` only when
        it is final and whole: the relay read everything the instance wrote (its drain handshake), or the job never
        had an instance (an empty log). Final but not complete: the tail may be lost (cancel, spot loss, instance
        lost)."""
        job = self.get(team_id, job_id)
        if self.log_reader is None:
            raise UpstreamUnavailable("logs are not configured")
        start = _parse_log_cursor(after)
        limit = max(MIN_LOG_PAGE, min(limit, MAX_LOG_PAGE))
        progress = self.log_reader.progress(job_id)
        committed = progress.committed
        tail = b""  # bytes after the committed offset that a relay shard's pages hold (not compacted yet)
        if progress.pages is not None and not progress.complete and start + limit > committed:
            tail = self.log_reader.paged(job_id, progress.pages, max(start, committed))
        visible = max(start, committed) + len(tail) if tail else committed
        if start > visible:
            # A cursor into bytes a relay loop had paged when another loop took over (it folded them in first, so
            # only a moment's worth) comes back once the new loop has re-read them: nothing new yet, not an error.
            paged_ahead = progress.pages is not None and not progress.complete
            if not paged_ahead or start - committed > logpages.MAX_PAGED_AHEAD:
                raise InvalidRequest(
                    "after is beyond the relayed output: pass a next_cursor value from an earlier page"
                )
            visible = start
        end = min(visible, start + limit)
        data = b""
        if min(end, committed) > start:
            upto = min(end, committed)
            data = logchunks.assemble(self.log_reader.chunks(job_id, start, upto - start), start, upto - start)
        if end > max(start, committed):
            data += tail[: end - max(start, committed)]
        # Nothing more will be relayed once the relay drained the output or the instance is gone (progress.complete),
        # or when the job ended without ever having an instance (e.g. a launch failure).
        never_launched = job.status.terminal and job.instance_id is None
        finished = progress.complete or never_launched
        everything = finished and start + len(data) >= committed
        page = logchunks.decode_bounded_page(data, final=everything)  # fits Lambda's 6 MB response, any bytes
        next_offset = start + page.consumed
        final = job.status.terminal and finished and next_offset >= committed
        whole = progress.drained or never_launched  # a job that never ran has an empty, whole log
        return LogPage(text=page.text, next_cursor=str(next_offset), final=final, complete=final and whole)


def _parse_log_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 15:
        raise InvalidRequest("after must be a next_cursor value from an earlier page (a byte offset)")
    return int(cursor)
