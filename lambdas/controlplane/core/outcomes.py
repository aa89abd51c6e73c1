"""How a job ends (pure): from the wrapper's recorded result, or from its instance ending without one."""

from __future__ import annotations

import datetime as dt
from typing import Any

from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Job


def from_result(job: Job, result: dict[str, str]) -> tuple[JobStatus, dict[str, Any]]:
    """The final status and fields for the wrapper's `result` (phase, exit_code, reason)."""
    reason = result.get("reason", "")
    code_text = result.get("exit_code", "")
    exit_code = int(code_text) if code_text.lstrip("-").isdigit() else None
    phase = result.get("phase", "run")
    fields: dict[str, Any] = {"exit_code": exit_code}
    if reason == "SUCCEEDED" and exit_code == 0:
        return JobStatus.SUCCEEDED, fields
    minutes = job.spec.max_runtime_minutes if job.spec else None
    if reason == "SETUP_FAILED":
        fields |= {
            "failure_reason": FailureReason.SETUP_FAILED,
            "failure_message": f"setup exited with code {exit_code}; run never started",
        }
    elif reason == "MAX_RUNTIME":
        fields |= {
            "failure_reason": FailureReason.MAX_RUNTIME,
            "failure_message": f"the job exceeded max_runtime_minutes ({minutes}) during {phase} and was stopped",
        }
    else:
        fields |= {"failure_reason": FailureReason.EXIT_NONZERO, "failure_message": f"run exited with code {exit_code}"}
    return JobStatus.FAILED, fields


def lost_instance(job: Job, state_reason: str, now: dt.datetime) -> tuple[FailureReason, str]:
    """Why a job whose instance ended without a relayed exit status failed."""
    if state_reason == "Server.SpotInstanceTermination":
        return FailureReason.SPOT_INTERRUPTED, "AWS reclaimed the spot instance before the job finished"
    if job.deadline_at is not None and now >= job.deadline_at:
        minutes = job.spec.max_runtime_minutes if job.spec else "?"
        return FailureReason.MAX_RUNTIME, f"the instance reached the job's deadline (max_runtime_minutes {minutes})"
    detail = f" ({state_reason})" if state_reason else ""
    return FailureReason.INSTANCE_LOST, f"the instance ended{detail} before the job's exit status was relayed"


MINIMUM_BILLED_SECONDS = 60  # EC2 Linux per-second billing has a one-minute minimum


def billing(job: Job, ended_at: dt.datetime) -> dict[str, Any]:
    """The billed duration (launch → end, at least a minute) and its cost estimate at the recorded hourly price;
    empty for a job that never had an instance."""
    if job.launched_at is None:
        return {}
    seconds = max(MINIMUM_BILLED_SECONDS, int((ended_at - job.launched_at).total_seconds()))
    fields: dict[str, Any] = {"billed_seconds": seconds}
    if job.hourly_price is not None:
        fields["cost_estimate"] = round(job.hourly_price * seconds / 3600, 4)
    return fields
