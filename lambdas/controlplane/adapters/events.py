"""EventBridge: the event patterns (one definition for the CDK stack and the local runtime) and the publisher of
"Job State Change" events on the control plane's custom bus.

Events in:  detail-type "Job Submission" on the custom bus → the job workflow (any source; detail = the task spec
            plus team_id and provider_id); EC2 "Instance State-change Notification" and "Spot Instance
            Interruption Warning" on the default bus → the instance-events function.
Events out: detail-type "Job State Change", source "ec2jobs", on the custom bus, for every job state change.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job

SOURCE = "ec2jobs"
JOB_STATE_CHANGE = "Job State Change"
JOB_SUBMISSION = "Job Submission"
EC2_STATE_CHANGE = "EC2 Instance State-change Notification"
SPOT_INTERRUPTION = "EC2 Spot Instance Interruption Warning"

SUBMISSION_PATTERN: dict[str, Any] = {"detail-type": [JOB_SUBMISSION]}
EC2_STATE_PATTERN: dict[str, Any] = {
    "source": ["aws.ec2"],
    "detail-type": [EC2_STATE_CHANGE],
    "detail": {"state": ["running", "shutting-down", "terminated", "stopping", "stopped"]},
}
SPOT_INTERRUPTION_PATTERN: dict[str, Any] = {"source": ["aws.ec2"], "detail-type": [SPOT_INTERRUPTION]}

logger = logging.getLogger(__name__)


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
        "updated_at": job.updated_at.isoformat(),
    }


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
