"""Managed recovery: the one place an attempt ends, and the workflow's Recover step that starts the next one.

`AttemptEnder.end` is called by whoever sees an attempt end without success — the relay (the wrapper's result, or the
instance gone), the instance-events Lambda (a spot interruption warning, the instance ending) and the reconciler —
and decides with the job's policy (core/recovery.py): RECOVERING (the attempt is recorded in `attempts`; the job
keeps its instance fields so the relay can drain what the instance still writes) or the terminal state, as before
recovery existed. Every write is conditional on the job's status and its current attempt, so two observers of the
same end (the warning and the relay, say) record it once, and an observer of an old attempt changes nothing.

`RecoveryService.recover` is the workflow's Recover step, after the relay loop of the ended attempt finished: it
terminates every live instance of the job (exactly one instance at a time: the next attempt launches only after
this), notes where the next attempt's log marker goes (the log's committed offset), and moves the job RECOVERING →
LAUNCHING with the next attempt number, the instance fields cleared and the region the next attempt starts in.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, Protocol

from controlplane.core import outcomes, recovery
from controlplane.core.errors import JobNotActive, TransitionRefused, UpstreamUnavailable
from controlplane.core.lifecycle import WITH_INSTANCE, FailureReason, JobStatus
from controlplane.core.models import Attempt, Job, utcnow
from controlplane.core.ports import JobStore, JobTransitions, LogProgress

logger = logging.getLogger(__name__)

# What an attempt's instance keeps doing after the attempt ended and the job is RECOVERING: the relay stops the job
# (SIGTERM, then SIGKILL), lets the wrapper upload its checkpoints and outputs and reads the output to its end; past
# this long after the attempt ended, its instance is terminated whatever is left (AWS reclaims a spot instance
# two minutes after its warning anyway).
RECOVERY_DRAIN_SECONDS = 90.0

# The fields of the current attempt's instance, cleared when the next attempt begins.
_INSTANCE_FIELDS = (
    "instance_id",
    "instance_state",
    "instance_address",
    "availability_zone",
    "image_id",
    "launch_zone",
    "launch_market",
    "launched_at",
    "deadline_at",
    "market",
    "exit_code",
    "relay_owner",
    "relay_lease_until",
    "waiting_since",
    "capacity_retry_at",
)


class LogCommits(Protocol):
    def progress(self, job_id: str) -> LogProgress: ...
    def fold_pages(self, job_id: str) -> LogProgress: ...
    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None: ...


def ended_attempts(job: Job) -> list[recovery.EndedAttempt]:
    return [recovery.EndedAttempt(a.end_reason or "", a.exit_code) for a in job.attempts]


def attempt_record(job: Job, reason: str, message: str, exit_code: int | None, ended_at: dt.datetime) -> Attempt:
    """The current attempt, ended now, as `attempts` keeps it."""
    seconds, cost = outcomes.attempt_billing(job, ended_at)
    return job.current_attempt().model_copy(
        update={
            "ended_at": ended_at,
            "end_reason": reason,
            "exit_code": exit_code,
            "message": message[: recovery.MAX_ATTEMPT_MESSAGE],
            "billed_seconds": seconds,
            "cost_estimate": cost,
        }
    )


def in_recovery_drain(job: Job, now: dt.datetime) -> bool:
    """A RECOVERING job whose ended attempt's instance may still write its tail (the relay drains it)."""
    if job.status != JobStatus.RECOVERING or not job.attempts or job.instance_id is None:
        return False
    ended = job.attempts[-1].ended_at
    return ended is not None and (now - ended).total_seconds() < RECOVERY_DRAIN_SECONDS


class AttemptEnder:
    """Ends the current attempt of a job: RECOVERING when its policy relaunches, else FAILED (conditional)."""

    def __init__(self, jobs: JobTransitions, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.jobs = jobs
        self.clock = clock

    def end(
        self,
        job: Job,
        reason: FailureReason,
        message: str,
        *,
        exit_code: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Job | None:
        """End `job`'s current attempt for `reason`. Returns the stored job after the write, or None when the
        write was refused (the job ended, or the attempt had already ended, meanwhile)."""
        spec = job.spec
        policy = spec.job_recovery if spec is not None else None
        verdict = recovery.decide(policy, ended_attempts(job), recovery.EndedAttempt(str(reason), exit_code))
        extra = dict(fields or {})
        if job.status not in WITH_INSTANCE:
            return None  # the attempt already ended (or never had an instance): nothing to end
        if verdict.relaunch:
            now = self.clock()
            record = attempt_record(job, str(reason), message, exit_code, now)
            extra.pop("instance_state", None)  # kept on the attempt's instance fields until the next attempt
            update = extra | {
                "attempts": [a.model_dump() for a in [*job.attempts, record]],
                "status_detail": f"attempt {job.attempt} ended ({message}); relaunching: {verdict.why}",
            }
            try:
                changed = self.jobs.transition(
                    job.job_id, JobStatus.RECOVERING, expected=WITH_INSTANCE, fields=update, attempt=job.attempt
                )
            except TransitionRefused:
                return None
            logger.info("attempt ended; relaunching", extra={"job_id": job.job_id, "attempt": job.attempt})
            return changed
        update = extra | {"failure_reason": reason, "failure_message": message}
        if exit_code is not None:
            update["exit_code"] = exit_code
        if policy is not None:
            update["notes"] = list(dict.fromkeys([*job.notes, f"job_recovery: not relaunched: {verdict.why}"]))
        try:
            return self.jobs.transition(
                job.job_id, JobStatus.FAILED, expected=WITH_INSTANCE, fields=update, attempt=job.attempt
            )
        except TransitionRefused:
            return None


class InstanceReaper(Protocol):
    def reap(self, job: Job) -> list[str]:
        """Terminate every live instance launched for the job; the terminated ids."""
        ...


class RecoveryService:
    """The workflow's Recover step."""

    def __init__(
        self,
        jobs: JobStore,
        logs: LogCommits,
        reaper: InstanceReaper,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.jobs = jobs
        self.logs = logs
        self.reaper = reaper
        self.clock = clock

    def recover(self, job_id: str, owner: str) -> Job:
        """RECOVERING → LAUNCHING (the next attempt). Idempotent: a retried step that finds the next attempt
        already begun returns the job as it is."""
        job = self.jobs.get(job_id)
        if job is None or job.status.terminal:
            raise JobNotActive(f"job {job_id} is {job.status if job else 'missing'}; no attempt follows")
        if job.status != JobStatus.RECOVERING:
            if job.status in {JobStatus.LAUNCHING, JobStatus.WAITING_CAPACITY} and job.attempts:
                return job  # a retried step: the next attempt has begun
            raise JobNotActive(f"job {job_id} is {job.status}, not RECOVERING")
        now = self.clock()
        holder = job.relay_owner  # this execution's own relay holds it as `<its ARN>#<shard>` (relay_fleet.py)
        own = holder is not None and holder.split("#", 1)[0] == owner
        if holder and not own and job.relay_lease_until is not None and job.relay_lease_until > now:
            # Another relay loop still streams the ended attempt's tail: wait for it (the workflow retries).
            raise UpstreamUnavailable(f"a relay loop still drains attempt {job.attempt} of job {job_id}; retrying")
        terminated = self.reaper.reap(job)
        if terminated:
            logger.info("terminated the ended attempt's instances", extra={"job_id": job_id, "ids": terminated})
        committed = self.logs.fold_pages(job_id).committed  # a dead loop's paged bytes first
        fields: dict[str, Any] = dict.fromkeys(_INSTANCE_FIELDS)
        if job.attempts and job.attempts[-1].attempt == job.attempt:
            # The ended attempt's instance billed until now (its drain after the end, then its termination).
            last = job.attempts[-1]
            seconds, cost = outcomes.attempt_billing(job.model_copy(update={"attempts": job.attempts[:-1]}), now)
            billed = last.model_copy(update={"billed_seconds": seconds, "cost_estimate": cost})
            fields["attempts"] = [a.model_dump() for a in [*job.attempts[:-1], billed]]
        fields |= {
            "attempt": job.attempt + 1,
            "region": self._next_region(job),
            "launch_round": 0,
            "regions_tried": [],
            "capacity_round": 0,
            "launch_started_at": now,
            "log_marker_at": committed,
            "status_detail": f"launching attempt {job.attempt + 1}",
        }
        try:
            return self.jobs.transition(
                job_id, JobStatus.LAUNCHING, expected=JobStatus.RECOVERING, fields=fields, attempt=job.attempt
            )
        except TransitionRefused:
            current = self.jobs.get(job_id)
            if current is not None and current.status in {JobStatus.LAUNCHING, JobStatus.WAITING_CAPACITY}:
                return current  # a concurrent Recover began it
            raise JobNotActive(f"job {job_id} ended while it was recovering") from None

    @staticmethod
    def _next_region(job: Job) -> str:
        """FAILOVER: the region the last attempt ran in. EAGER_NEXT_REGION after a preemption: the next region of
        resources.region (a list), wrapping around."""
        spec = job.spec
        if spec is None or spec.job_recovery is None:
            return job.region
        regions = list(spec.resources.regions)
        last = job.attempts[-1] if job.attempts else None
        eager = spec.job_recovery.strategy == recovery.Strategy.EAGER_NEXT_REGION
        if eager and last is not None and last.end_reason in recovery.LOSS_REASONS and job.region in regions:
            return regions[(regions.index(job.region) + 1) % len(regions)]
        return job.region


def final_if_ended(logs: LogCommits, jobs: Any, job_id: str) -> None:
    """After an attempt ended without a drain: the log is final when the job itself ended (a RECOVERING job's log
    goes on with its next attempt)."""
    job = jobs.get(job_id)
    if job is None or job.status.terminal:
        progress = logs.fold_pages(job_id)
        logs.commit(job_id, progress.committed, complete=True)
