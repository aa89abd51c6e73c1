"""Step Functions: start the job's workflow (named after the job, so starting twice is a no-op; a job admitted from
its team's queue gets `<job>-admitted`), and start a relay-only execution when a job's relay loop died (named after
the job and the restart's number)."""

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
        return self._start(
            job.job_id, execution_input(job), "could not start the job's workflow ({}); retry the request"
        )

    def admit(self, job: Job) -> str:
        """Start the workflow of a job admitted from its team's queue (service/admission.py). Its own name: a job
        submitted by event or console already had an execution, which ended when the job was queued."""
        return self._start(
            f"{job.job_id}-admitted", execution_input(job), "could not start an admitted job's workflow ({})"
        )

    def resume_relay(self, job: Job, attempt: int) -> str:
        """Start an execution that only relays (the state machine routes `resume_relay` inputs to Relay)."""
        execution = {"resume_relay": True, "job_id": job.job_id, "team_id": job.team_id}
        return self._start(
            f"{job.job_id}-relay-{attempt}", execution, f"could not start a relay for {job.job_id} ({{}})"
        )

    def resume_launch(self, job: Job, attempt: int) -> str:
        """Start an execution that goes on launching a job waiting for capacity (the state machine routes
        `resume_launch` inputs to Bootstrap)."""
        execution = {"resume_launch": True, "job_id": job.job_id, "team_id": job.team_id}
        return self._start(
            f"{job.job_id}-launch-{attempt}", execution, f"could not resume launching {job.job_id} ({{}})"
        )

    def _start(self, name: str, execution: dict[str, Any], failure: str) -> str:
        """StartExecution under a deterministic name: an existing execution of that name is this one (never twice)."""
        if not self.state_machine_arn:
            raise UpstreamUnavailable("the control plane has no STATE_MACHINE_ARN configured; jobs cannot start")
        try:
            response = self.client.start_execution(
                stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(execution, sort_keys=True)
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "ExecutionAlreadyExists":  # same name, other input: impossible for our deterministic inputs
                return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
            raise UpstreamUnavailable(failure.format(code)) from None
        return str(response["executionArn"])
