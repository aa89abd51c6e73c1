"""EventBridge: the event patterns (one definition for the CDK stack and the local runtime) and the publishers of
the control plane's events on its custom bus. The schemas are documented in docs/events.md.

Events in:  detail-type "Job Submission" on the custom bus → the job workflow, the whole event as input. The rule
            takes every source, so that a submission with a wrong source is answered by a Rejected event rather
            than dropped unseen; the workflow accepts only the source `ec2jobs.team.<team_id>` and submits for that
            team (an administrator's IAM policy, condition key events:source, binds each team's automation to its
            own source). EC2 "Instance State-change Notification" and "Spot Instance Interruption Warning" on the
            default bus → the instance-events function.
Events out: source "ec2jobs", on the custom bus: "Job State Change" for every job state change, and "Job
            Submission Rejected" for every console execution or Job Submission event the workflow refused.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from controlplane.core.ids import team_event_source
from controlplane.core.lifecycle import JobStatus

if TYPE_CHECKING:  # annotations only: the instance-events handler imports this module for its constants
    from controlplane.core.models import Job

SOURCE = "ec2jobs"
JOB_STATE_CHANGE = "Job State Change"
JOB_SUBMISSION = "Job Submission"
JOB_SUBMISSION_REJECTED = "Job Submission Rejected"
EC2_STATE_CHANGE = "EC2 Instance State-change Notification"
SPOT_INTERRUPTION = "EC2 Spot Instance Interruption Warning"

SUBMISSION_PATTERN: dict[str, Any] = {"detail-type": [JOB_SUBMISSION]}  # any source: see the module's docstring
EC2_STATE_PATTERN: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": [EC2_STATE_CHANGE],
    "detail": {"state": ["running", "shutting-down", "terminated", "stopping", "stopped"]},
}
SPOT_INTERRUPTION_PATTERN: dict[str, Any] = {"source": ["aws.ec2"], "detail-type": [SPOT_INTERRUPTION]}
# A job ended (our own events: only the control plane puts source "ec2jobs"; teams' roles may only put
# ec2jobs.team.<id>): the reconcile function admits what now fits in that team's queue (docs/budgets.md).
JOB_ENDED_PATTERN: dict[str, Any] = {
    "source": [SOURCE],
    "detail-type": [JOB_STATE_CHANGE],
    "detail": {"status": ["SUCCEEDED", "FAILED", "CANCELLED"]},
}

logger = logging.getLogger(__name__)


def team_submission_policy(team_id: str, bus_arn: str) -> dict[str, Any]:
    """The IAM policy an administrator attaches to a team's automation role: PutEvents on the control plane's bus,
    for Job Submission events whose source is that team's, and nothing else (docs/events.md shows it). Every entry
    of a PutEvents call must match (ForAllValues, as AWS's own example does); the Null check refuses a request
    with no source at all, which ForAllValues alone would let through."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SubmitJobsAsOneTeam",
                "Effect": "Allow",
                "Action": "events:PutEvents",
                "Resource": bus_arn,
                "Condition": {
                    "ForAllValues:StringEquals": {
                        "events:source": [team_event_source(team_id)],
                        "events:detail-type": [JOB_SUBMISSION],
                    },
                    "Null": {"events:source": "false"},
                },
            }
        ],
    }


def job_state_change_detail(job: Job, previous: JobStatus | None) -> dict[str, Any]:
    """The documented schema of a Job State Change event's detail (README, "Events")."""
    return {
        "job_id": job.job_id,
        "team_id": job.team_id,
        "provider_id": job.provider_id,
        "name": job.name,
        "status": str(job.status),
        "previous_status": str(previous) if previous else None,
        "failure_reason": str(job.failure_reason) if job.failure_reason else None,
        "failure_message": job.failure_message,
        "exit_code": job.exit_code,
        "instance_id": job.instance_id,
        "instance_type": job.instance_type,
        "region": job.region,
        "hourly_price": job.hourly_price,
        "source": job.source,
        "attempt": job.attempt,
        # Why the attempt that just ended (RECOVERING) or, when the job ends, its last attempt ended.
        "attempt_end_reason": _attempt_end_reason(job),
        "status_detail": job.status_detail if job.status in _DETAILED else None,
        "updated_at": job.updated_at.isoformat(),
    }


_DETAILED = frozenset({JobStatus.RECOVERING, JobStatus.WAITING_CAPACITY})


def _attempt_end_reason(job: Job) -> str | None:
    if job.attempts and job.attempts[-1].attempt == job.attempt:  # RECOVERING, or ended while it was
        return job.attempts[-1].end_reason
    if job.status.terminal:
        return str(job.failure_reason) if job.failure_reason else str(job.status)
    return None


class JobEventPublisher:
    """Puts a Job State Change event after each successful state write. Publishing never undoes or blocks the
    state change: a failure is logged (and the job's state is still readable through the API)."""

    def __init__(self, client: Any, bus_name: str) -> None:
        self.client = client
        self.bus_name = bus_name

    def __call__(self, previous: Job | None, job: Job) -> None:
        if previous is not None and previous.status == job.status:
            return
        entry = {
            "Source": SOURCE,
            "DetailType": JOB_STATE_CHANGE,
            "Detail": json.dumps(job_state_change_detail(job, previous.status if previous else None)),
            "EventBusName": self.bus_name,
            "Resources": [job.instance_id] if job.instance_id else [],
        }
        try:
            response = self.client.put_events(Entries=[entry])
            if response.get("FailedEntryCount"):
                logger.warning("job state change event rejected", extra={"job_id": job.job_id})
        except Exception:  # never let an event failure undo or hide the state change itself
            logger.exception("could not publish job state change", extra={"job_id": job.job_id})


# The Job Submission Rejected detail's fields, in order (docs/events.md). Nothing else is ever put: no spec, no env.
REJECTION_FIELDS = (
    "reason",
    "code",
    "submission",
    "team_id",
    "job_id",
    "idempotency_key",
    "event_id",
    "event_source",
    "execution_arn",
)


def job_submission_rejected_detail(fields: Mapping[str, Any], rejected_at: dt.datetime) -> dict[str, Any]:
    """The documented schema of a Job Submission Rejected event's detail: exactly REJECTION_FIELDS + rejected_at."""
    detail = {name: fields.get(name) for name in REJECTION_FIELDS}
    return detail | {"rejected_at": rejected_at.isoformat()}


class RejectionPublisher:
    """Puts a Job Submission Rejected event. Returns whether EventBridge accepted it; never raises (the refusal
    itself, the failed execution, stands either way)."""

    def __init__(self, client: Any, bus_name: str) -> None:
        self.client = client
        self.bus_name = bus_name

    def __call__(self, fields: Mapping[str, Any]) -> bool:
        detail = job_submission_rejected_detail(fields, dt.datetime.now(dt.UTC))
        entry = {
            "Source": SOURCE,
            "DetailType": JOB_SUBMISSION_REJECTED,
            "Detail": json.dumps(detail),
            "EventBusName": self.bus_name,
            "Resources": [],
        }
        try:
            response = self.client.put_events(Entries=[entry])
        except Exception:  # never let the report hide the refusal
            logger.exception("could not publish a job submission rejection", extra={"job_id": detail["job_id"]})
            return False
        if response.get("FailedEntryCount"):
            logger.warning("job submission rejection event refused", extra={"job_id": detail["job_id"]})
            return False
        return True
