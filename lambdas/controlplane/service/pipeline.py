"""The launch workflow's steps (Validate → Bootstrap → Launch, and the failure catcher), job-scoped.

A step that decides the job cannot run raises JobFailed / InvalidSpec; here, in one place, that becomes a FAILED
record (conditional, so a job that ended meanwhile keeps its state) before the error goes back to Step Functions,
whose execution then fails with the same reason and sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.core.errors import DomainError, InvalidSpec, JobFailed, JobNotActive
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import BootstrapRecord, Job, Provider
from controlplane.core.ports import JobStore, ProviderCredentials, ProviderStore, SecretStore
from controlplane.service.bootstrap import BootstrapService
from controlplane.service.failures import fail_job
from controlplane.service.intake import IntakeService
from controlplane.service.launch import LaunchService
from controlplane.service.recovery import RecoveryService
from controlplane.service.relay import DIRECT_OWNER, RelayService

# Where the launch step's bootstrap record came from: the Bootstrap step (checked against the provider's account
# this execution) or Validate's read of the cached record (not checked: the workflow skipped Bootstrap).
BOOTSTRAP_CHECKED = "bootstrap"
BOOTSTRAP_FROM_CACHE = "cache"


class Pipeline:
    def __init__(
        self,
        jobs: JobStore,
        providers: ProviderStore,
        secrets: SecretStore,
        intake: IntakeService,
        bootstrap: BootstrapService,
        launch: LaunchService,
        relay: RelayService,
    ) -> None:
        self.jobs = jobs
        self.providers = providers
        self.secrets = secrets
        self.intake = intake
        self.bootstrapper = bootstrap
        self.launcher = launch
        self.relayer = relay
        self.recovery = RecoveryService(jobs, relay.logs, reaper=self)

    def validate(self, raw: Any, execution_name: str | None, execution_arn: str | None) -> dict[str, Any]:
        """The plan; with the team's cached bootstrap record (`bootstrap`, `bootstrap_source: cache`) when its
        resources in the job's account and region were bootstrapped before: the workflow then skips Bootstrap."""
        state = self.intake.validate(raw, execution_name, execution_arn).as_state()
        return self._with_cached_bootstrap(state, state["provider_id"], state["team_id"], state["region"])

    def _with_cached_bootstrap(
        self, state: dict[str, Any], provider_id: str, team_id: str, region: str
    ) -> dict[str, Any]:
        """The state with the team's cached bootstrap record of the region (`bootstrap`, `bootstrap_source: cache`)
        when there is one: the `Bootstrapped?` choice then goes straight to Launch."""
        record = self.bootstrapper.known(provider_id, team_id, region)
        if record is None:
            return state
        return state | {"bootstrap": record.model_dump(mode="json"), "bootstrap_source": BOOTSTRAP_FROM_CACHE}

    def bootstrap(self, state: dict[str, Any]) -> dict[str, Any]:
        job_id = _job_id(state)
        with self._failing(job_id):
            job = self._active(job_id)
            provider, credentials = self._provider(job)
            record = self.bootstrapper.ensure(provider, credentials, job.region)
        return state | {"bootstrap": record.model_dump(mode="json"), "bootstrap_source": BOOTSTRAP_CHECKED}

    def launch(self, state: dict[str, Any], time_left: Callable[[], float] | None = None) -> dict[str, Any]:
        job_id = _job_id(state)
        with self._failing(job_id):
            job = self.jobs.get(job_id)
            if job is None:
                raise JobNotActive(f"job {job_id} does not exist")
            _, credentials = self._provider(job)
            record = BootstrapRecord.model_validate(state["bootstrap"])
            # A record Validate took from the cache was not checked against the account: if RunInstances says
            # what it names is gone, Launch sends the job through Bootstrap instead of failing it.
            unchecked = state.get("bootstrap_source") == BOOTSTRAP_FROM_CACHE
            if time_left is None:
                result = self.launcher.launch(job, credentials, record, unchecked=unchecked)
            else:
                result = self.launcher.launch(job, credentials, record, time_left, unchecked=unchecked)
        launch = {"next": result.next, "wait_seconds": result.wait_seconds}
        return state | {"instance_id": result.job.instance_id, "status": str(result.job.status), "launch": launch}

    def relay(self, state: dict[str, Any], time_left: Callable[[], float] | None = None) -> dict[str, Any]:
        """One relay invocation: stream the job's output for a bounded time; `relay.finished` ends the loop."""
        job_id = _job_id(state)
        owner = str(state.get("relay_owner") or DIRECT_OWNER)  # the execution's ARN (the state machine passes it)
        if time_left is None:
            outcome = self.relayer.relay(job_id, owner=owner)
        else:
            outcome = self.relayer.relay(job_id, time_left, owner)
        return state | {"relay": outcome.as_state()}

    def recover(self, state: dict[str, Any]) -> dict[str, Any]:
        """The Recover step: the ended attempt's instance terminated, the next attempt begun (LAUNCHING). With the
        team's cached bootstrap record for the next attempt's region, as Validate passes it: the workflow then skips
        Bootstrap (Launch re-bootstraps if RunInstances says a resource is gone)."""
        job_id = _job_id(state)
        owner = str(state.get("relay_owner") or DIRECT_OWNER)
        with self._failing(job_id):
            job = self.recovery.recover(job_id, owner)
        result = {"job_id": job_id, "team_id": job.team_id, "attempt": job.attempt, "region": job.region}
        return self._with_cached_bootstrap(result, job.provider_id, job.team_id, job.region)

    def reap(self, job: Job) -> list[str]:
        """Terminate every live instance launched for the job (with its provider's keys)."""
        _, credentials = self._provider(job)
        return self.launcher.reap(job, credentials)

    def record_failure(self, state: dict[str, Any], error: dict[str, Any] | None) -> dict[str, str]:
        """The workflow's catch-all: make sure the job ends FAILED, that no instance launched for it keeps running,
        and give the execution a readable Error/Cause (the job's failure_reason and failure_message)."""
        error = error or {}
        name = str(error.get("Error") or "States.Runtime")
        cause = _cause_text(error.get("Cause"))
        job_id = state.get("job_id") if isinstance(state, dict) else None
        job = self.jobs.get(str(job_id)) if job_id else None
        if job is None or job.team_id != state.get("team_id"):
            # No job, or a raw input naming someone else's job id (Validate refused it): touch nothing.
            return {"Error": name, "Cause": cause}
        if not job.status.terminal and name not in {"JobNotActive", "DuplicateSubmission"}:
            reason = FailureReason.INVALID_SPEC if name == "InvalidSpec" else FailureReason.LAUNCH_ERROR
            job = fail_job(self.jobs, job.job_id, reason, f"The launch workflow failed ({name}): {cause}") or job
        if job.status.terminal:
            self._reap(job)
            progress = self.relayer.logs.fold_pages(job.job_id)  # nothing more will be relayed
            # A job that never had an instance wrote nothing: its empty log is whole (drained). One that had an
            # instance may have lost its tail: final only (a drain the relay confirmed earlier stays recorded).
            self.relayer.logs.commit(job.job_id, progress.committed, complete=True, drained=job.instance_id is None)
        if job.status == JobStatus.FAILED:
            return {"Error": str(job.failure_reason or name), "Cause": job.failure_message or cause}
        return {"Error": name, "Cause": cause}

    def _reap(self, job: Job) -> None:
        """Best effort: the reconciler (issue 7) sweeps whatever this cannot reach."""
        try:
            _, credentials = self._provider(job)
            self.launcher.reap(job, credentials)
        except (DomainError, ClientError, BotoCoreError):
            return

    # -- helpers --------------------------------------------------------------------------------------------

    @contextmanager
    def _failing(self, job_id: str) -> Iterator[None]:
        try:
            yield
        except JobFailed as failure:
            fail_job(self.jobs, job_id, failure.reason, failure.message)
            raise
        except InvalidSpec as failure:
            fail_job(self.jobs, job_id, FailureReason.INVALID_SPEC, failure.message)
            raise

    def _active(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.status.terminal:
            raise JobNotActive(f"job {job_id} is {job.status if job else 'missing'}; nothing to do")
        return job

    def _provider(self, job: Job) -> tuple[Provider, ProviderCredentials]:
        provider = self.providers.get(job.team_id, job.provider_id)
        if provider is None:
            raise JobFailed(FailureReason.CREDENTIALS, f"provider {job.provider_id} was deleted")
        try:
            credentials = self.secrets.get_provider_credentials(provider.secret_arn)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"ResourceNotFoundException", "InvalidRequestException"}:
                raise JobFailed(
                    FailureReason.CREDENTIALS,
                    f"the stored key of provider {provider.provider_id} is gone ({code}); add the provider again",
                ) from None
            raise
        return provider, credentials


def _job_id(state: dict[str, Any]) -> str:
    job_id = state.get("job_id") if isinstance(state, dict) else None
    if not isinstance(job_id, str) or not job_id:
        raise JobNotActive("the step input carries no job_id")
    return job_id


def _cause_text(cause: Any) -> str:
    """A Lambda error's Cause is JSON {"errorMessage", "errorType", "stackTrace"}: keep the message only."""
    import json

    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
        except ValueError:
            return cause[:2000]
        if isinstance(parsed, dict) and "errorMessage" in parsed:
            return str(parsed["errorMessage"])[:2000]
        return cause[:2000]
    return "" if cause is None else str(cause)[:2000]
