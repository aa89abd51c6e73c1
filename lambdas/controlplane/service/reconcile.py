"""The reconciler (scheduled every minute): make every job end and every instance die, even when events were lost,
the workflow died, or the provider is another AWS account whose EC2 events never reach our bus.

Per provider × region (providers from the registry, regions from their bootstrap records; no Scan) it makes one
batched DescribeInstances of the instances ec2jobs launched for that team, then for each active job:
- PENDING / LAUNCHING for longer than the launch timeout → FAILED / LAUNCH_ERROR (its workflow never got it going),
  terminating anything launched for it;
- PROVISIONING / RUNNING whose instance is gone (terminated, shutting down, or — past the visibility grace after
  launch, and confirmed by DescribeInstances by id — not found) → FAILED with the reason its end implies
  (SPOT_INTERRUPTED / MAX_RUNTIME / INSTANCE_LOST), log complete; within that grace a missing instance is "not yet
  visible" (DescribeInstances is eventually consistent), the same rule the relay follows;
- a running instance with no public IPv4 address 2 minutes after launch (its subnet does not auto-assign one; the
  relay, outside any VPC, can never reach it) → terminated, FAILED / NO_PUBLIC_ADDRESS (the relay's own check,
  repeated here in case no relay loop runs);
- a live instance past the job's deadline (max runtime + grace + boot allowance) → terminated, FAILED / MAX_RUNTIME;
- a live instance whose relay loop died (its relay lease expired, or was never taken) → a relay-only execution
  resumes streaming from the committed offset (the wrapper keeps the instance up until its output is drained);
- a changed instance state → recorded (a missed event);
- managed recovery (service/recovery.py): an instance gone under a job with job_recovery ends the attempt (RECOVERING
  when the policy relaunches); a RECOVERING job whose workflow stopped (no live relay lease, unchanged for the relay
  stale bound) gets a relay-only execution, which ends the attempt's loop and runs Recover; a WAITING_CAPACITY job
  whose workflow missed its retry by the stale bound gets a launch-only execution, and one waiting past its
  max_wait_minutes (plus the launch timeout) ends FAILED / CAPACITY; an ended attempt's instance still running after
  its drain bound, and any instance of the job other than the current attempt's, is terminated;
and terminates orphans: live instances of ours (tagged for the team) that no active job owns — when the job they
were launched for ended more than the ended grace ago (its self-termination failed; never sooner, whatever the
instance's age), otherwise once they are older than the orphan grace (a launch may still be recording its instance).
A failure about one job or instance is logged and counted, and the sweep goes on with the others.
When the provider's keys are rejected (revoked mid-job), nothing can be seen or terminated there: stale launches
and jobs past their deadline (by then the instance's own OS-level shutdown has ended it) are failed, and the error
is reported every sweep.
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
from controlplane.core.errors import TransitionRefused, UpstreamUnavailable
from controlplane.core.launch_errors import AUTH_CODES
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job, utcnow
from controlplane.core.ports import JobStateWriter, LogProgress, ProviderClients, SecretStore
from controlplane.core.provisioning import JOB_TAG
from controlplane.service.recovery import RECOVERY_DRAIN_SECONDS, AttemptEnder, final_if_ended

logger = logging.getLogger(__name__)
GONE = frozenset({"shutting-down", "terminated"})


class ReconcileJobs(JobStateWriter, Protocol):
    def active_jobs(self) -> list[Job]: ...
    def get(self, job_id: str) -> Job | None: ...
    def note_relay_restart(
        self, job_id: str, seen_restarts: int, now: dt.datetime, lease_ended: bool = True
    ) -> bool: ...
    def get_many(self, job_ids: list[str]) -> dict[str, Job]: ...


class RelayRestarter(Protocol):
    def resume_relay(self, job: Job, attempt: int) -> str: ...
    def resume_launch(self, job: Job, attempt: int) -> str: ...


class ReconcileProviders(Protocol):
    def registered(self) -> list[tuple[str, str]]: ...
    def get(self, team_id: str, provider_id: str) -> Any: ...


class Regions(Protocol):
    def regions(self, provider_id: str) -> list[str]: ...


class LogCompletion(Protocol):
    def progress(self, job_id: str) -> LogProgress: ...
    def fold_pages(self, job_id: str) -> LogProgress: ...
    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None: ...


@dataclass(frozen=True)
class ReconcileSettings:
    launch_timeout_seconds: float = 900.0
    orphan_grace_seconds: float = 600.0
    ended_grace_seconds: float = 120.0
    relay_stale_seconds: float = 120.0
    max_relay_restarts: int = 20
    launch_step_seconds: float = 180.0  # the launch Lambda's timeout: a WAITING_CAPACITY retry may take this long


@dataclass
class Report:
    described: int = 0
    finalized: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    relays_restarted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    job_failures: int = 0  # jobs or instances whose repair failed this sweep (isolated; the others went on)
    admission: dict[str, int] = field(default_factory=dict)  # the admission sweep's counts


class AdmissionSweep(Protocol):
    def sweep(self) -> dict[str, int]: ...


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
        relays: RelayRestarter | None = None,
        admission: AdmissionSweep | None = None,
    ) -> None:
        self.admission = admission  # per-team limits: the queue's deadlines and interrupted releases (docs/budgets.md)
        self.ender = AttemptEnder(jobs)
        self.relays = relays
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
        # Two providers may be keys to one AWS account: an instance of another provider's live job is not an orphan.
        active_ids = {job.job_id for jobs in active.values() for job in jobs}
        places: dict[tuple[str, str], str] = {}  # (provider, region) → team
        for team_id, provider_id in self.providers.registered():
            for region in self.regions.regions(provider_id):
                places[(provider_id, region)] = team_id
        for (provider_id, region), jobs in active.items():
            places.setdefault((provider_id, region), jobs[0].team_id)
        for (provider_id, region), team_id in sorted(places.items()):
            try:
                self._place(team_id, provider_id, region, active.get((provider_id, region), []), active_ids, report)
            except (ClientError, BotoCoreError) as error:
                report.errors.append(f"{provider_id}/{region}: {type(error).__name__}")
                logger.warning("reconcile failed", extra={"provider_id": provider_id, "region": region})
        if self.admission is not None:
            try:
                report.admission = self.admission.sweep()
            except Exception as error:
                report.errors.append(f"admission: {type(error).__name__}")
                logger.exception("the admission sweep failed")
        return report

    def _place(
        self, team_id: str, provider_id: str, region: str, jobs: list[Job], active_ids: set[str], report: Report
    ) -> None:
        provider = self.providers.get(team_id, provider_id)
        now = self.clock()
        if provider is None:
            for job in jobs:  # the provider was deleted under its jobs: nothing can run them any more
                self._fail(job, FailureReason.CREDENTIALS, f"provider {provider_id} was deleted", report)
            return
        credentials = self.secrets.get_provider_credentials(provider.secret_arn)
        ec2 = Ec2Account(self.clients("ec2", credentials, region), region)
        try:
            instances = ec2.instances_of_team(team_id)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code not in AUTH_CODES:
                raise
            report.errors.append(f"{provider_id}/{region}: the provider's credentials are rejected ({code})")
            logger.warning("provider credentials rejected", extra={"provider_id": provider_id, "code": code})
            for job in jobs:
                self._blind(job, code, now, report)
            return
        report.described += 1
        by_id = {str(i["InstanceId"]): i for i in instances}
        by_job: dict[str, list[dict[str, Any]]] = {}
        for instance in instances:
            tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
            by_job.setdefault(str(tags.get(JOB_TAG, "")), []).append(instance)
        owned: set[str] = set()
        for job in jobs:
            owned |= {str(i["InstanceId"]) for i in by_job.get(job.job_id, [])}
            if job.instance_id:
                owned.add(job.instance_id)
            try:
                self._job(job, ec2, by_id, by_job.get(job.job_id, []), now, report)
            except Exception as error:  # noqa: BLE001 - one bad job never stops the sweep of the others
                self._job_failed(job.job_id, error, report)
        unowned: list[tuple[dict[str, Any], str | None]] = []
        for instance in instances:
            tags = {t.get("Key"): t.get("Value") for t in instance.get("Tags", [])}
            job_tag = str(tags[JOB_TAG]) if tags.get(JOB_TAG) else None
            # Owned by an active job — maybe one launched with another provider's keys to this same account, which
            # that provider's sweep handles — or not.
            if str(instance["InstanceId"]) not in owned and job_tag not in active_ids:
                unowned.append((instance, job_tag))
        ended_jobs = self.jobs.get_many([tag for _, tag in unowned if tag]) if unowned else {}
        for instance, job_tag in unowned:  # record its state on its ended job; kill orphans
            instance_id = str(instance["InstanceId"])
            try:
                self._unowned(ec2, team_id, instance, ended_jobs.get(job_tag) if job_tag else None, now, report)
            except Exception as error:  # noqa: BLE001 - one bad instance never stops the sweep
                self._job_failed(job_tag or instance_id, error, report)

    def _unowned(
        self,
        ec2: Ec2Account,
        team_id: str,
        instance: dict[str, Any],
        ended: Job | None,
        now: dt.datetime,
        report: Report,
    ) -> None:
        instance_id = str(instance["InstanceId"])
        state = str(instance.get("State", {}).get("Name"))
        if ended is not None and ended.instance_id == instance_id and ended.instance_state != state:
            self.jobs.set_instance_state(ended.job_id, state)  # a missed event after the job ended
        if state not in LIVE_STATES or state == "shutting-down":
            return
        if self._orphaned(instance, ended, now):
            ec2.terminate([instance_id])
            report.terminated.append(instance_id)
            logger.warning("terminated an orphan instance", extra={"instance_id": instance_id, "team_id": team_id})

    @staticmethod
    def _job_failed(subject: str, error: Exception, report: Report) -> None:
        """Isolate, log and count a failure about one job or instance; the sweep goes on with the others."""
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        what = f"{type(error).__name__}{f' ({code})' if code else ''}"
        report.errors.append(f"{subject}: {what}")
        report.job_failures += 1
        logger.error("reconciling one job failed; the sweep goes on", extra={"subject": subject, "error": what})

    def _orphaned(self, instance: dict[str, Any], job: Job | None, now: dt.datetime) -> bool:
        """Terminate it now? The instance of an ended job: once the job ended more than the ended grace ago (its
        self-termination failed) — never sooner, however old the instance is, so the relay can drain its tail (a
        spot-interrupted one keeps its two-minute notice too). An instance no ended job explains: once it is older
        than the orphan grace (a launch may still be recording it)."""
        if job is not None and job.status.terminal and job.ended_at is not None:
            grace = outcomes.ended_job_grace(job, self.settings.ended_grace_seconds)
            return (now - job.ended_at).total_seconds() >= grace
        launched = instance.get("LaunchTime")
        if isinstance(launched, dt.datetime):
            return (now - launched).total_seconds() >= self.settings.orphan_grace_seconds
        return True

    def _job(
        self,
        job: Job,
        ec2: Ec2Account,
        by_id: dict[str, dict[str, Any]],
        tagged: list[dict[str, Any]],
        now: dt.datetime,
        report: Report,
    ) -> None:
        age = (now - (job.launch_started_at or job.created_at)).total_seconds()
        if job.status == JobStatus.WAITING_CAPACITY:
            self._waiting(job, ec2, tagged, now, report)
            return
        if job.status == JobStatus.RECOVERING:
            self._recovering(job, ec2, by_id, now, report)
            return
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
        if instance is None and job.instance_id:
            if outcomes.not_yet_visible(job, now):
                return  # DescribeInstances is eventually consistent: not yet visible is not lost
            instance = self._confirm(ec2, job.instance_id)  # asked by id: InvalidInstanceID.NotFound = gone
        state = str(instance.get("State", {}).get("Name")) if instance else "terminated"
        if instance is not None and state != job.instance_state:
            self.jobs.set_instance_state(job.job_id, state)  # a missed event
        if state in GONE or state in {"stopped", "stopping"}:
            reason_code = str((instance or {}).get("StateReason", {}).get("Code", ""))
            reason, message = outcomes.lost_instance(job, reason_code, now)
            self._end_attempt(job, reason, message, report, instance_state=state)
            return
        surplus = [
            str(i["InstanceId"])
            for i in tagged
            if str(i["InstanceId"]) != job.instance_id and i.get("State", {}).get("Name") in {"pending", "running"}
        ]
        if surplus:  # an earlier attempt's instance, or a duplicate: one job, one instance
            ec2.terminate(surplus)
            report.terminated += surplus
        if instance is not None and self._unreachable(job, instance, state, now):
            ec2.terminate([str(job.instance_id)])
            report.terminated.append(str(job.instance_id))
            self._fail(job, FailureReason.NO_PUBLIC_ADDRESS, outcomes.NO_ADDRESS_HELP, report)
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
            return
        self._keep_relayed(job, now, report)

    @staticmethod
    def _unreachable(job: Job, instance: dict[str, Any], state: str, now: dt.datetime) -> bool:
        """Running without a public IPv4 address (and never reached at one): the relay can never reach it."""
        launched = instance.get("LaunchTime")
        launched_at = launched if isinstance(launched, dt.datetime) else None
        public_ip = instance.get("PublicIpAddress") or job.instance_address
        return outcomes.without_public_address(state, public_ip, launched_at, now)

    @staticmethod
    def _confirm(ec2: Ec2Account, instance_id: str) -> dict[str, Any] | None:
        """The instance by id (it may lack our tags), or None when EC2 says it does not exist."""
        try:
            found = ec2.describe_instances([instance_id])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "InvalidInstanceID.NotFound":
                raise
            return None
        return found[0] if found else None

    def _waiting(
        self, job: Job, ec2: Ec2Account, tagged: list[dict[str, Any]], now: dt.datetime, report: Report
    ) -> None:
        """WAITING_CAPACITY: past its max_wait_minutes (and the launch timeout), FAILED / CAPACITY; a workflow that
        missed its retry by the stale bound gets a launch-only execution."""
        policy = job.spec.job_recovery if job.spec else None
        since = job.waiting_since or job.updated_at
        limit = (policy.max_wait_minutes * 60 if policy else 0) + self.settings.launch_timeout_seconds
        if (now - since).total_seconds() > limit:
            live = [str(i["InstanceId"]) for i in tagged if i.get("State", {}).get("Name") in LIVE_STATES]
            if live:
                ec2.terminate(live)
                report.terminated += live
            minutes = policy.max_wait_minutes if policy else 0
            regions = " and ".join((job.spec.resources.regions if job.spec else ()) or (job.region,))
            self._fail(job, FailureReason.CAPACITY, f"AWS had no capacity for {job.instance_type} in {regions} within "
                       f"job_recovery.max_wait_minutes ({minutes}); the reconciler ended the wait", report)  # fmt: skip
            return
        due = job.capacity_retry_at or job.updated_at
        if (now - due).total_seconds() > self.settings.relay_stale_seconds + self.settings.launch_step_seconds:
            self._restart(job, now, report, launch=True)

    def _recovering(
        self, job: Job, ec2: Ec2Account, by_id: dict[str, dict[str, Any]], now: dt.datetime, report: Report
    ) -> None:
        """RECOVERING: the ended attempt's instance is terminated once its drain bound passed (Recover normally
        did it); a workflow that stopped gets a relay-only execution, which ends the loop and runs Recover."""
        ended = job.attempts[-1].ended_at if job.attempts else None
        instance = by_id.get(job.instance_id or "")
        state = str(instance.get("State", {}).get("Name")) if instance else ""
        drained_by = RECOVERY_DRAIN_SECONDS + self.settings.ended_grace_seconds
        if state in {"pending", "running"} and (ended is None or (now - ended).total_seconds() > drained_by):
            ec2.terminate([str(job.instance_id)])
            report.terminated.append(str(job.instance_id))
        self._keep_relayed(job, now, report)

    def _end_attempt(
        self, job: Job, reason: FailureReason, message: str, report: Report, instance_state: str | None = None
    ) -> None:
        """The current attempt's instance is gone: the job relaunches if its job_recovery allows, else FAILED."""
        fields = {"instance_state": instance_state} if instance_state is not None else None
        changed = self.ender.end(job, reason, message, fields=fields)
        if changed is None:
            return  # it ended meanwhile: keep that
        final_if_ended(self.logs, self.jobs, job.job_id)
        report.finalized.append(job.job_id)

    def _keep_relayed(self, job: Job, now: dt.datetime, report: Report) -> None:
        """A live job whose relay loop died (lease expired, or never taken after launch) gets a new loop; so does a
        RECOVERING one whose workflow stopped (the new loop ends the attempt and runs Recover)."""
        if self.relays is None or job.status not in {JobStatus.PROVISIONING, JobStatus.RUNNING, JobStatus.RECOVERING}:
            return
        stale = self.settings.relay_stale_seconds
        if job.relay_lease_until is not None and job.relay_lease_until > now:
            return
        if job.status == JobStatus.RECOVERING:
            if (now - job.updated_at).total_seconds() < stale:
                return
        elif job.relay_lease_until is None and (now - (job.launched_at or job.created_at)).total_seconds() < stale:
            return
        self._restart(job, now, report)

    def _restart(self, job: Job, now: dt.datetime, report: Report, *, launch: bool = False) -> None:
        """Start a relay-only (or, for a job waiting for capacity, a launch-only) execution, at most once per sweep
        and stale bound (compare-and-set on the job's restart count)."""
        if self.relays is None:
            return
        stale = self.settings.relay_stale_seconds
        if job.relay_restarted_at is not None and (now - job.relay_restarted_at).total_seconds() < stale:
            return  # the loop started last time has not claimed the lease yet
        if job.relay_restarts >= self.settings.max_relay_restarts:
            report.errors.append(f"{job.job_id}: relay restarted {job.relay_restarts} times; not again")
            return
        if not self.jobs.note_relay_restart(job.job_id, job.relay_restarts, now, lease_ended=not launch):
            return  # another sweep restarted it, a loop claimed the lease since the sweep read it, or the job moved on
        try:
            if launch:
                self.relays.resume_launch(job, job.relay_restarts + 1)
            else:
                self.relays.resume_relay(job, job.relay_restarts + 1)
        except UpstreamUnavailable as error:
            report.errors.append(f"{job.job_id}: {error.message}")
            return
        report.relays_restarted.append(job.job_id)
        restart = job.relay_restarts + 1
        logger.warning("restarted the job's relay loop", extra={"job_id": job.job_id, "restart": restart})

    def _blind(self, job: Job, code: str, now: dt.datetime, report: Report) -> None:
        """The provider's keys are rejected: end what needs no EC2 call to end, leave the rest to the instance."""
        age = (now - job.created_at).total_seconds()
        if job.status in {JobStatus.PENDING, JobStatus.LAUNCHING}:
            if age > self.settings.launch_timeout_seconds:
                self._fail(job, FailureReason.CREDENTIALS, f"the provider's credentials are rejected ({code})", report)
            return
        if job.deadline_at is not None and now > job.deadline_at:
            self._fail(
                job,
                FailureReason.CREDENTIALS,
                f"the provider's credentials are rejected ({code}): ec2jobs cannot see or terminate instance "
                f"{job.instance_id}; it passed its deadline, by which its own OS-level shutdown has ended it",
                report,
            )

    def _fail(
        self, job: Job, reason: FailureReason, message: str, report: Report, instance_state: str | None = None
    ) -> None:
        fields: dict[str, Any] = {"failure_reason": reason, "failure_message": message}
        if instance_state is not None:
            fields["instance_state"] = instance_state
        try:
            self.jobs.transition(job.job_id, JobStatus.FAILED, fields=fields)
        except TransitionRefused:
            return  # it ended meanwhile: keep that
        progress = self.logs.fold_pages(job.job_id)
        self.logs.commit(job.job_id, progress.committed, complete=True)
        report.finalized.append(job.job_id)
