"""The job lifecycle: states, failure reasons and the transitions allowed between states.

[QUEUED →] PENDING → LAUNCHING → PROVISIONING → RUNNING → SUCCEEDED | FAILED | CANCELLED.
A job that does not fit its team's limits yet waits QUEUED (core/admission.py) until it does (→ PENDING), is
cancelled, or waited max_queue_minutes (→ FAILED / QUEUE_TIMEOUT).
Any non-terminal state may end FAILED or CANCELLED (a launch can fail, a job can be cancelled before it
starts); SUCCEEDED needs a recorded exit status, which only exists once the instance has run. Terminal states
never change. The store enforces this table with conditional writes.

With `job_recovery` (core/recovery.py) a job makes attempts: an attempt that ends in a way the job's policy
recovers from moves PROVISIONING / RUNNING → RECOVERING (the attempt is recorded, its instance terminated) →
LAUNCHING (the next attempt); a launch that finds no capacity in any zone and region waits in WAITING_CAPACITY
(retried on a timer, no Lambda held) until it launches (→ PROVISIONING) or `max_wait_minutes` pass (→ FAILED).
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    LAUNCHING = "LAUNCHING"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    WAITING_CAPACITY = "WAITING_CAPACITY"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class FailureReason(StrEnum):
    """Why a job FAILED. The set is fixed and documented (README, "Job states")."""

    INVALID_SPEC = "INVALID_SPEC"
    CREDENTIALS = "CREDENTIALS"
    CAPACITY = "CAPACITY"
    QUOTA = "QUOTA"
    LAUNCH_ERROR = "LAUNCH_ERROR"
    SETUP_FAILED = "SETUP_FAILED"
    INPUTS_FAILED = "INPUTS_FAILED"
    EXIT_NONZERO = "EXIT_NONZERO"
    MAX_RUNTIME = "MAX_RUNTIME"
    SPOT_INTERRUPTED = "SPOT_INTERRUPTED"
    INSTANCE_LOST = "INSTANCE_LOST"
    NO_PUBLIC_ADDRESS = "NO_PUBLIC_ADDRESS"
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"


FAILURE_REASON_HELP: dict[FailureReason, str] = {
    FailureReason.INVALID_SPEC: "The task spec asks for something invalid or not sold by AWS; fix the spec.",
    FailureReason.CREDENTIALS: "The provider's AWS keys were rejected or lack a permission from the policy.",
    FailureReason.CAPACITY: "AWS had no capacity for the instance type in any tried Availability Zone (and region); "
    "with job_recovery, none for max_wait_minutes.",
    FailureReason.QUOTA: "An EC2 service quota (vCPU or spot count) is too low; request an increase.",
    FailureReason.LAUNCH_ERROR: "RunInstances failed for another reason; the message carries AWS's text.",
    FailureReason.SETUP_FAILED: "The task's `setup` commands exited non-zero; `run` never started.",
    FailureReason.INPUTS_FAILED: "The job's workdir, file_mounts or resume_from checkpoints could not be fetched onto "
    "the instance (the log says why); `setup` never started.",
    FailureReason.EXIT_NONZERO: "The task's `run` commands exited non-zero (see exit_code).",
    FailureReason.MAX_RUNTIME: "The job exceeded max_runtime_minutes and its instance was terminated.",
    FailureReason.SPOT_INTERRUPTED: "AWS reclaimed the spot instance.",
    FailureReason.INSTANCE_LOST: "The instance ended without recording an exit status.",
    FailureReason.NO_PUBLIC_ADDRESS: "The instance got no public IPv4 address (its subnet does not auto-assign "
    "one), so the relay could not reach it; it was terminated. Turn on auto-assign in the default subnets.",
    FailureReason.QUEUE_TIMEOUT: "The job waited QUEUED for max_queue_minutes without fitting its team's limits "
    "(budget, concurrent instances or GPUs; docs/budgets.md) and never launched.",
}

TERMINAL: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PENDING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.PENDING: frozenset({JobStatus.LAUNCHING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.LAUNCHING: frozenset(
        {JobStatus.PROVISIONING, JobStatus.WAITING_CAPACITY, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.PROVISIONING: frozenset(
        {JobStatus.RUNNING, JobStatus.RECOVERING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.RECOVERING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RECOVERING: frozenset({JobStatus.LAUNCHING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.WAITING_CAPACITY: frozenset({JobStatus.PROVISIONING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# States in which the job has (or is getting) an instance of its current attempt.
WITH_INSTANCE: frozenset[JobStatus] = frozenset({JobStatus.PROVISIONING, JobStatus.RUNNING})
# States in which Launch works on the job (WAITING_CAPACITY: a retry after no zone or region had capacity).
LAUNCHABLE: frozenset[JobStatus] = frozenset({JobStatus.LAUNCHING, JobStatus.WAITING_CAPACITY})

ACTIVE: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL)
# Active jobs the reconciler watches (the jobs table's sparse `active` index): a QUEUED job has no workflow and no
# instance yet; admission's sweep watches it (service/admission.py).
ADMITTED: frozenset[JobStatus] = ACTIVE - {JobStatus.QUEUED}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED[current]


def predecessors(target: JobStatus) -> frozenset[JobStatus]:
    """States from which `target` may be entered (what a conditional write must check)."""
    return frozenset(state for state, nexts in ALLOWED.items() if target in nexts)
