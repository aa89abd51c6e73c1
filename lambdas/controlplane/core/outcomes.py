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
    failed_uploads = [area for area in ("outputs", "checkpoints") if result.get(area) == "failed"]
    if failed_uploads:
        fields["upload_failures"] = failed_uploads
    if reason == "SUCCEEDED" and exit_code == 0:
        return JobStatus.SUCCEEDED, fields
    minutes = job.spec.max_runtime_minutes if job.spec else None
    if reason == "CANCELLED":
        return JobStatus.CANCELLED, fields | {"failure_message": "cancelled by request"}
    if reason == "INTERRUPTED":  # the relay stopped it because its attempt ended (normally already RECOVERING)
        return JobStatus.FAILED, fields | {
            "failure_reason": FailureReason.SPOT_INTERRUPTED,
            "failure_message": "the attempt was stopped on the instance because AWS is reclaiming it",
        }
    if reason == "INPUTS_FAILED":
        return JobStatus.FAILED, fields | {
            "failure_reason": FailureReason.INPUTS_FAILED,
            "failure_message": "the job's inputs could not be fetched onto the instance (its log says why); setup "
            "never started",
        }
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


# DescribeInstances is eventually consistent: right after RunInstances it may not know the instance yet
# (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html). Within this long after launch, an
# instance missing from it is "not yet visible"; after it, missing must be confirmed (DescribeInstances by id →
# InvalidInstanceID.NotFound) before the job is declared lost. One rule for the relay and the reconciler.
VISIBILITY_GRACE_SECONDS = 600.0
# AWS reclaims a spot instance two minutes after its interruption warning; the instance keeps running (and the relay
# keeps streaming what it writes) until then (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html).
SPOT_NOTICE_SECONDS = 120.0
# A job cancelled while RUNNING is stopped on its instance (SIGTERM, SIGKILL 10 s later) and the relay reads what it
# wrote to the end before the instance terminates; past this long after the cancel, the instance is terminated
# whatever is left unread (the log is then final but not complete).
CANCEL_DRAIN_SECONDS = 30.0


# A running instance still without a public IPv4 address this long after launch has none: EC2 assigns it at launch.
NO_ADDRESS_SECONDS = 120.0
NO_ADDRESS_HELP = (
    "the instance has no public IPv4 address, and the relay (outside any VPC) can reach it only there. Its subnet "
    "(the region's default subnet in the Availability Zone) does not auto-assign public IPv4 addresses: turn it "
    "on with `aws ec2 modify-subnet-attribute --subnet-id <subnet> --map-public-ip-on-launch` for the default "
    "subnet of every Availability Zone jobs may use (or recreate the default VPC), then submit the job again"
)


def without_public_address(
    state: str, public_ip: str | None, launched_at: dt.datetime | None, now: dt.datetime
) -> bool:
    """Running, long enough after launch for EC2 to have assigned a public address, and still none."""
    if state != "running" or public_ip or launched_at is None:
        return False
    return (now - launched_at).total_seconds() >= NO_ADDRESS_SECONDS


def not_yet_visible(job: Job, now: dt.datetime) -> bool:
    """Is a job's instance that DescribeInstances does not show still within the visibility grace?"""
    launched = job.launched_at or job.created_at
    return (now - launched).total_seconds() < VISIBILITY_GRACE_SECONDS


def streams_after_end(job: Job, now: dt.datetime) -> bool:
    """Does the relay keep streaming an ended job? A spot-interrupted one, through AWS's two-minute notice (plus a
    minute's margin): its instance still runs and writes; and a cancelled one, while its instance stops the job and
    the relay reads the tail (CANCEL_DRAIN_SECONDS, plus a margin). The job's end is already decided."""
    if job.instance_id is None or job.ended_at is None:
        return False
    since = (now - job.ended_at).total_seconds()
    if job.status == JobStatus.FAILED and job.failure_reason == FailureReason.SPOT_INTERRUPTED:
        return since < SPOT_NOTICE_SECONDS + 60
    if job.status == JobStatus.CANCELLED:
        return since < CANCEL_DRAIN_SECONDS + 15
    return False


def ended_job_grace(job: Job, ended_grace_seconds: float) -> float:
    """How long after a job ended its still-running instance is left alone: its self-termination normally takes
    seconds; a spot-interrupted one also keeps its two-minute notice, which AWS ends by reclaiming it; a cancelled
    one is stopping its job and draining its output for up to CANCEL_DRAIN_SECONDS."""
    if job.failure_reason == FailureReason.SPOT_INTERRUPTED:
        return ended_grace_seconds + SPOT_NOTICE_SECONDS
    if job.status == JobStatus.CANCELLED:
        return ended_grace_seconds + CANCEL_DRAIN_SECONDS
    return ended_grace_seconds


def lost_instance(job: Job, state_reason: str, now: dt.datetime) -> tuple[FailureReason, str]:
    """Why a job whose instance ended without a relayed exit status failed."""
    if state_reason == "Server.SpotInstanceTermination":
        return FailureReason.SPOT_INTERRUPTED, "AWS reclaimed the spot instance before the job finished"
    if job.deadline_at is not None and now >= job.deadline_at:
        minutes = job.spec.max_runtime_minutes if job.spec else "?"
        return FailureReason.MAX_RUNTIME, f"the instance reached the job's deadline (max_runtime_minutes {minutes})"
    detail = f" ({state_reason})" if state_reason else ""
    if job.status == JobStatus.PROVISIONING and state_reason in {"", "Client.InstanceInitiatedShutdown"}:
        return FailureReason.INSTANCE_LOST, (
            f"the instance ended{detail} before the relay handed it the job's start bundle: an instance the relay "
            "cannot reach terminates itself after BUNDLE_TIMEOUT_SECONDS (15 minutes by default) without running "
            "anything — see the job's status_detail for what the relay last saw"
        )
    return FailureReason.INSTANCE_LOST, f"the instance ended{detail} before the job's exit status was relayed"


MINIMUM_BILLED_SECONDS = 60  # EC2 Linux per-second billing has a one-minute minimum


def attempt_billing(job: Job, ended_at: dt.datetime) -> tuple[int | None, float | None]:
    """The current attempt's billed seconds (launch → end, at least a minute) and its cost at the recorded hourly
    price; (None, None) for an attempt that never had an instance, or one already recorded in `attempts` (a job
    that ends while RECOVERING)."""
    if job.launched_at is None or (job.attempts and job.attempts[-1].attempt == job.attempt):
        return None, None
    seconds = max(MINIMUM_BILLED_SECONDS, int((ended_at - job.launched_at).total_seconds()))
    cost = None if job.hourly_price is None else round(job.hourly_price * seconds / 3600, 4)
    return seconds, cost


def billing(job: Job, ended_at: dt.datetime) -> dict[str, Any]:
    """The job's billed duration and cost estimate when it ends: the sum over its attempts (the earlier ones as
    recorded, the current one launch → end, at least a minute each); empty for a job that never had an instance."""
    seconds, cost = attempt_billing(job, ended_at)
    earlier = [a for a in job.attempts if a.billed_seconds is not None]
    if seconds is None and not earlier:
        return {}
    fields: dict[str, Any] = {"billed_seconds": (seconds or 0) + sum(a.billed_seconds or 0 for a in earlier)}
    costs = [a.cost_estimate for a in earlier]
    if seconds is not None:
        costs.append(cost)
    if costs and all(c is not None for c in costs):  # an unpriced attempt (spot): the sum would understate it
        fields["cost_estimate"] = round(sum(c for c in costs if c is not None), 4)
    return fields
