"""Step Functions: start the job's workflow (named after the job, so starting twice is a no-op), and start a
relay-only execution when a job's relay loop died (named after the job and the restart's number)."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from controlplane.core.errors import UpstreamUnavailable
from controlplane.core.models import Job


def execution_input(job: Job) -> dict[str, Any]:
    return {"source": "api", "job_id": job.job_id, "team_id": job.team_id}


class StepFunctionsStarter:
    def __init__(self, client: Any, state_machine_arn: str | None) -> None:
        self.client = client
        self.state_machine_arn = state_machine_arn

    def start(self, job: Job) -> str:
        if not self.state_machine_arn:
            raise UpstreamUnavailable("the control plane has no STATE_MACHINE_ARN configured; jobs cannot start")
        try:
            response = self.client.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=job.job_id,
                input=json.dumps(execution_input(job), sort_keys=True),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ExecutionAlreadyExists":
                # Same name, different input: impossible for our deterministic input, but never start twice.
                return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}:{job.job_id}"
            raise UpstreamUnavailable(f"could not start the job's workflow ({code}); retry the request") from None
        return str(response["executionArn"])

    def resume_relay(self, job: Job, attempt: int) -> str:
        """Start an execution that only relays (the state machine routes `resume_relay` inputs to Relay)."""
        if not self.state_machine_arn:
            raise UpstreamUnavailable("the control plane has no STATE_MACHINE_ARN configured; relays cannot restart")
        name = f"{job.job_id}-relay-{attempt}"
        try:
            response = self.client.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=name,
                input=json.dumps({"resume_relay": True, "job_id": job.job_id, "team_id": job.team_id}),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ExecutionAlreadyExists":
                return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
            raise UpstreamUnavailable(f"could not start a relay for job {job.job_id} ({code})") from None
        return str(response["executionArn"])
