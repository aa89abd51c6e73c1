"""Recording a job's failure: one conditional transition to FAILED with a reason and a sentence."""

from __future__ import annotations

from controlplane.core.errors import TransitionRefused
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job
from controlplane.core.ports import JobStore

MAX_MESSAGE = 2000


def fail_job(jobs: JobStore, job_id: str, reason: FailureReason | str, message: str) -> Job | None:
    """Move the job to FAILED unless it already ended (a terminal state never changes); returns the stored job."""
    try:
        return jobs.transition(
            job_id,
            JobStatus.FAILED,
            fields={"failure_reason": str(reason), "failure_message": message[:MAX_MESSAGE]},
        )
    except TransitionRefused:
        return jobs.get(job_id)
