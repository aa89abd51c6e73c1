"""EC2 instance state changes → jobs. Every state is recorded on the job (`instance_state`); when an instance ends
(shutting-down / terminated) while its job is still active, the job ends too: the relay normally finished it
already (SUCCEEDED, or FAILED with the wrapper's reason) once the output was drained, so reaching this point means
no exit status was relayed — FAILED with MAX_RUNTIME (past its deadline) or INSTANCE_LOST."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from controlplane.core import outcomes
from controlplane.core.lifecycle import WITH_INSTANCE, FailureReason
from controlplane.core.models import Job, utcnow
from controlplane.core.ports import JobStateWriter, LogProgress
from controlplane.service.recovery import AttemptEnder, final_if_ended

ENDED_STATES = frozenset({"shutting-down", "terminated"})
# EC2's states in lifecycle order: a late event never moves the recorded state backwards.
STATE_ORDER = {"pending": 0, "running": 1, "stopping": 2, "stopped": 3, "shutting-down": 4, "terminated": 5}
logger = logging.getLogger(__name__)


class InstanceJobs(JobStateWriter, Protocol):
    def by_instance(self, instance_id: str) -> Job | None: ...


class LogProgressStore(Protocol):
    def progress(self, job_id: str) -> LogProgress: ...
    def fold_pages(self, job_id: str) -> LogProgress: ...
    def commit(self, job_id: str, committed: int, *, complete: bool = False) -> None: ...


@dataclass(frozen=True)
class Handled:
    job_id: str | None
    action: str


class InstanceReason(Protocol):
    """Why EC2 ended an instance: DescribeInstances' StateReason code, with the provider's keys (seed policy)."""

    def state_reason(self, job: Job) -> str: ...


class InstanceEventsService:
    def __init__(self, jobs: InstanceJobs, logs: LogProgressStore, reasons: InstanceReason | None = None) -> None:
        self.jobs = jobs
        self.logs = logs
        self.reasons = reasons
        self.ender = AttemptEnder(jobs)

    def _job_of(self, instance_id: str) -> Job | None:
        """The job whose CURRENT attempt runs on the instance (an earlier attempt's instance changes nothing)."""
        job = self.jobs.by_instance(instance_id)
        if job is None or job.instance_id != instance_id:
            return None
        return job

    def _state_reason(self, job: Job) -> str:
        """EC2 state-change events carry no reason (their detail is instance-id and state), so a spot reclaim whose
        warning was missed is told from DescribeInstances' StateReason (Server.SpotInstanceTermination), as the
        reconciler and the relay read it. Empty when it cannot be read (the job then ends INSTANCE_LOST)."""
        if self.reasons is None:
            return ""
        try:
            return self.reasons.state_reason(job)
        except Exception:  # noqa: BLE001 - the reason is a refinement; the job must end either way
            logger.warning("could not read the instance's state reason", extra={"job_id": job.job_id})
            return ""

    def spot_interruption(self, instance_id: str) -> Handled:
        """AWS reclaims the spot instance in two minutes: the attempt cannot finish. It ends now with
        SPOT_INTERRUPTED: the job relaunches (RECOVERING) if its job_recovery allows, else it ends FAILED (the relay
        keeps streaming what the instance still writes until it is gone)."""
        job = self._job_of(instance_id)
        if job is None:
            return Handled(None, "not the current instance of an ec2jobs job")
        if job.status not in WITH_INSTANCE:
            return Handled(job.job_id, f"already {job.status}")
        changed = self.ender.end(
            job,
            FailureReason.SPOT_INTERRUPTED,
            "AWS is reclaiming the spot instance (a 2-minute interruption warning)",
        )
        if changed is None:
            return Handled(job.job_id, "already ended")
        return Handled(job.job_id, f"{changed.status} after SPOT_INTERRUPTED")

    def handle(self, instance_id: str, state: str) -> Handled:
        job = self._job_of(instance_id)
        if job is None:
            return Handled(None, "not the current instance of an ec2jobs job")
        if STATE_ORDER.get(state, -1) < STATE_ORDER.get(job.instance_state or "", -1):
            return Handled(job.job_id, f"ignored {state}: already {job.instance_state} (an event out of order)")
        self.jobs.set_instance_state(job.job_id, state)
        if state not in ENDED_STATES or job.status not in WITH_INSTANCE:
            return Handled(job.job_id, f"recorded {state}")
        reason, message = outcomes.lost_instance(job, self._state_reason(job), utcnow())
        # The relay may have recorded the outcome meanwhile: then this write is refused and that outcome stays.
        changed = self.ender.end(job, reason, message)
        final_if_ended(self.logs, self.jobs, job.job_id)  # nothing more can be relayed, unless a next attempt runs
        logger.info("attempt ended with its instance", extra={"job_id": job.job_id, "reason": str(reason)})
        return Handled(job.job_id, f"ended {reason}" + (f": {changed.status}" if changed else ""))
