"""Cancel: the job ends CANCELLED at once (a conditional write, so a job that already ended answers 409).

A RUNNING job's instance is left to the log relay, which stops the job on it (SIGTERM, then SIGKILL), reads what it
wrote to the end and lets it terminate itself — within CANCEL_DRAIN_SECONDS, after which the relay (or, if the relay
is gone, the reconciler) terminates it. Any other job's instance (still booting: its job has not started) is
terminated at once. A job cancelled before launch never gets an instance: Validate and Launch check the job's state,
and Launch terminates an instance that started while the job was being cancelled."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.ec2 import LIVE_STATES, Ec2Account
from controlplane.core.errors import Conflict, NotFound, TransitionRefused, UpstreamUnavailable
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import JobStore, ProviderClients, ProviderStore, SecretStore


class CancelService:
    def __init__(
        self, jobs: JobStore, providers: ProviderStore, secrets: SecretStore, clients: ProviderClients
    ) -> None:
        self.jobs = jobs
        self.providers = providers
        self.secrets = secrets
        self.clients = clients

    def cancel(self, team_id: str, job_id: str) -> tuple[Job, list[str]]:
        """Returns the cancelled job and the instances terminated for it."""
        job = self.jobs.get(job_id)
        if job is None or job.team_id != team_id:
            raise NotFound("job", job_id)
        fields = {"failure_message": "cancelled by request"}
        for _ in range(5):  # conditional on the status read: RUNNING decides who ends the instance
            if job.status.terminal:
                raise Conflict(f"job {job_id} already ended ({job.status}); only active jobs can be cancelled")
            previous = job.status
            try:
                job = self.jobs.transition(job_id, JobStatus.CANCELLED, expected=previous, fields=fields)
                break
            except TransitionRefused:
                current = self.jobs.get(job_id)
                if current is None:
                    raise NotFound("job", job_id) from None
                job = current
        else:
            raise UpstreamUnavailable(f"job {job_id} kept changing state while being cancelled; try again")
        if previous == JobStatus.QUEUED:
            return job, []  # never admitted: no workflow, no instance (the store's listener takes it off the queue)
        if previous == JobStatus.RUNNING and job.instance_id:
            return job, []  # the relay stops it and drains its output (bounded: CANCEL_DRAIN_SECONDS)
        return job, self.terminate_instances(job)

    def terminate_instances(self, job: Job) -> list[str]:
        """Terminate every live instance launched for the job (found by its tags, so also one that started while
        the job was being cancelled). Raises UpstreamUnavailable when EC2 cannot be reached: the reconciler will
        finish the job's cleanup."""
        provider = self.providers.get(job.team_id, job.provider_id)
        if provider is None:
            return []
        try:
            credentials = self.secrets.get_provider_credentials(provider.secret_arn)
            ec2 = Ec2Account(self.clients("ec2", credentials, job.region), job.region)
            found: list[dict[str, Any]] = ec2.instances_of_job(job.team_id, job.job_id)
            live = [str(i["InstanceId"]) for i in found if i.get("State", {}).get("Name") in LIVE_STATES]
            if live:
                ec2.terminate(live)
        except (ClientError, BotoCoreError) as error:
            raise UpstreamUnavailable(
                f"job {job.job_id} is cancelled, but its instance could not be terminated yet ({type(error).__name__});"
                " it will be"
            ) from None
        return live
