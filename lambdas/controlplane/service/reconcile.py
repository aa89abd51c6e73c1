"""The reconciler (scheduled every minute): make every job end and every instance die, even when events were lost,
the workflow died, or the provider is another AWS account whose EC2 events never reach our bus.

Per provider × region (providers from the registry, regions from their bootstrap records; no Scan) it makes one
batched DescribeInstances of the instances ec2jobs launched for that team, then for each active job:
- PENDING / LAUNCHING for longer than the launch timeout → FAILED / LAUNCH_ERROR (its workflow never got it going),
  terminating anything launched for it;
- PROVISIONING / RUNNING whose instance is gone (terminated, shutting down, or dropped out of DescribeInstances) →
  FAILED with the reason its end implies (SPOT_INTERRUPTED / MAX_RUNTIME / INSTANCE_LOST), log complete;
- a live instance past the job's deadline (max runtime + grace + boot allowance) → terminated, FAILED / MAX_RUNTIME;
- a changed instance state → recorded (a missed event);
and terminates orphans: live instances of ours (tagged for the team) that no active job owns, older than a grace.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from controlplane.adapters.ec2 import LIVE_STATES, Ec2Account
from controlplane.core import outcomes
from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job, utcnow
from controlplane.core.ports import JobStateWriter, LogProgress, ProviderClients, SecretStore
from controlplane.core.provisioning import JOB_TAG

logger = logging.getLogger(__name__)
GONE = frozenset({"shutting-down", "terminated"})


class ReconcileJobs(JobStateWriter, Protocol):
    def active_jobs(self) -> list[Job]: ...
    def get(self, job_id: str) -> Job | None: ...


class ReconcileProviders(Protocol):
    def registered(self) -> list[tuple[str, str]]: ...
    def get(self, team_id: str, provider_id: str) -> Any: ...


class Regions(Protocol):
    def regions(self, provider_id: str) -> list[str]: ...


class LogCompletion(Protocol):
    def progress(self, job_id: str) -> LogProgress: ...
    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None: ...


@dataclass(frozen=True)
class ReconcileSettings:
    launch_timeout_seconds: float = 900.0
    orphan_grace_seconds: float = 600.0


@dataclass
class Report:
    described: int = 0
    finalized: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        jobs: ReconcileJobs,
        providers: ReconcileProviders,
        regions: Regions,
        secrets: SecretStore,
        clients: ProviderClients,
        logs: LogCompletion,
        settings: ReconcileSettings,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.jobs = jobs
        self.providers = providers
        self.regions = regions
        self.secrets = secrets
        self.clients = clients
        self.logs = logs
        self.settings = settings
        self.clock = clock

    def run(self) -> Report:
        report = Report()
        active: dict[tuple[str, str], list[Job]] = {}
        for job in self.jobs.active_jobs():
            active.setdefault((job.provider_id, job.region), []).append(job)
        places: dict[tuple[str, str], str] = {}  # (provider, region) → team
        for team_id, provider_id in self.providers.registered():
            for region in self.regions.regions(provider_id):
                places[(provider_id, region)] = team_id
        for (provider_id, region), jobs in active.items():
            places.setdefault((provider_id, region), jobs[0].team_id)
        for (provider_id, region), team_id in sorted(places.items()):
            try:
                self._place(team_id, provider_id, region, active.get((provider_id, region), []), report)
            except (ClientError, BotoCoreError) as error:
                report.errors.append(f"{provider_id}/{region}: {type(error).__name__}")
                logger.warning("reconcile failed", extra={"provider_id": provider_id, "region": region})
        return report

    def _place(self, team_id: str, provider_id: str, region: str, jobs: list[Job], report: Report) -> None:
        provider = self.providers.get(team_id, provider_id)
        now = self.clock()
        if provider is None:
            for job in jobs:  # the provider was deleted under its jobs: nothing can run them any more
                self._fail(job, FailureReason.CREDENTIALS, f"provider {provider_id} was deleted", report)
            return
        credentials = self.secrets.get_provider_credentials(provider.secret_arn)
        ec2 = Ec2Account(self.clients("ec2", credentials, region), region)
        instances = ec2.instances_of_team(team_id)
        report.described += 1
        by_id = {str(i["InstanceId"]): i for i in instances}
        by_job: dict[str, list[dict[str, Any]]] = {}
        for instance in instances:
            tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
            by_job.setdefault(str(tags.get(JOB_TAG, "")), []).append(instance)
        owned: set[str] = set()
        for job in jobs:
            owned |= {str(i["InstanceId"]) for i in by_job.get(job.job_id, [])}
            self._job(job, ec2, by_id, by_job.get(job.job_id, []), now, report)
        for instance in instances:  # orphans: ours, alive, owned by no active job, older than the grace period
            instance_id = str(instance["InstanceId"])
            state = instance.get("State", {}).get("Name")
            launched = instance.get("LaunchTime")
            if instance_id in owned or state not in LIVE_STATES or state == "shutting-down":
                continue
            if (
                isinstance(launched, dt.datetime)
                and (now - launched).total_seconds() < self.settings.orphan_grace_seconds
            ):
                continue
            ec2.terminate([instance_id])
            report.terminated.append(instance_id)
            logger.warning("terminated an orphan instance", extra={"instance_id": instance_id, "team_id": team_id})

    def _job(
        self,
        job: Job,
        ec2: Ec2Account,
        by_id: dict[str, dict[str, Any]],
        tagged: list[dict[str, Any]],
        now: dt.datetime,
        report: Report,
    ) -> None:
        age = (now - job.created_at).total_seconds()
        if job.status in {JobStatus.PENDING, JobStatus.LAUNCHING}:
            if age > self.settings.launch_timeout_seconds:
                live = [str(i["InstanceId"]) for i in tagged if i.get("State", {}).get("Name") in LIVE_STATES]
                if live:
                    ec2.terminate(live)
                    report.terminated += live
                minutes = self.settings.launch_timeout_seconds / 60
                self._fail(
                    job, FailureReason.LAUNCH_ERROR, f"the job did not launch within {minutes:.0f} minutes", report
                )
            return
        instance = by_id.get(job.instance_id or "")
        state = str(instance.get("State", {}).get("Name")) if instance else "terminated"
        if instance is not None and state != job.instance_state:
            self.jobs.set_instance_state(job.job_id, state)  # a missed event
        if state in GONE or state in {"stopped", "stopping"}:
            reason_code = str((instance or {}).get("StateReason", {}).get("Code", ""))
            reason, message = outcomes.lost_instance(job, reason_code, now)
            self._fail(job, reason, message, report)
            return
        if job.deadline_at is not None and now > job.deadline_at:
            ec2.terminate([str(job.instance_id)])
            report.terminated.append(str(job.instance_id))
            runtime = job.spec.max_runtime_minutes if job.spec else "?"
            self._fail(
                job,
                FailureReason.MAX_RUNTIME,
                f"the job passed its deadline (max_runtime_minutes {runtime} + grace); the reconciler terminated it",
                report,
            )

    def _fail(self, job: Job, reason: FailureReason, message: str, report: Report) -> None:
        try:
            self.jobs.transition(
                job.job_id, JobStatus.FAILED, fields={"failure_reason": reason, "failure_message": message}
            )
        except TransitionRefused:
            return  # it ended meanwhile: keep that
        progress = self.logs.progress(job.job_id)
        self.logs.commit(job.job_id, progress.committed, complete=True)
        report.finalized.append(job.job_id)
