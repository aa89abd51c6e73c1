"""How jobs end: the wrapper's result → status and reason; a lost instance → reason; billing at the end."""

from __future__ import annotations

import datetime as dt

import pytest

from controlplane.core import outcomes
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from controlplane.core.spec import TaskSpec

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def job(**fields: object) -> Job:
    values: dict[str, object] = {
        "job_id": "job-1",
        "team_id": "t",
        "provider_id": "p",
        "region": "us-east-1",
        "spec": TaskSpec(run="x", max_runtime_minutes=45),
        "instance_type": "g5.xlarge",
        "hourly_price": 1.006,
        "created_at": T0,
        "updated_at": T0,
    }
    return Job.model_validate(values | fields)


@pytest.mark.parametrize(
    ("result", "status", "reason"),
    [
        ({"phase": "run", "exit_code": "0", "reason": "SUCCEEDED"}, JobStatus.SUCCEEDED, None),
        ({"phase": "run", "exit_code": "7", "reason": "EXIT_NONZERO"}, JobStatus.FAILED, "EXIT_NONZERO"),
        ({"phase": "setup", "exit_code": "2", "reason": "SETUP_FAILED"}, JobStatus.FAILED, "SETUP_FAILED"),
        ({"phase": "run", "exit_code": "124", "reason": "MAX_RUNTIME"}, JobStatus.FAILED, "MAX_RUNTIME"),
        ({"phase": "run", "exit_code": "0", "reason": "GARBLED"}, JobStatus.FAILED, "EXIT_NONZERO"),
        ({"phase": "inputs", "exit_code": "1", "reason": "INPUTS_FAILED"}, JobStatus.FAILED, "INPUTS_FAILED"),
        ({"phase": "run", "exit_code": "143", "reason": "CANCELLED"}, JobStatus.CANCELLED, None),
    ],
)
def test_the_wrappers_result_decides_status_and_reason(
    result: dict[str, str], status: JobStatus, reason: str | None
) -> None:
    target, fields = outcomes.from_result(job(), result)
    assert target == status
    assert fields.get("failure_reason") == reason
    assert fields["exit_code"] == int(result["exit_code"])


def test_a_lost_instance_is_spot_max_runtime_or_lost() -> None:
    assert outcomes.lost_instance(job(), "Server.SpotInstanceTermination", T0)[0] == "SPOT_INTERRUPTED"
    past = job(deadline_at=T0 - dt.timedelta(seconds=1))
    assert outcomes.lost_instance(past, "", T0)[0] == "MAX_RUNTIME"
    reason, message = outcomes.lost_instance(job(deadline_at=T0 + dt.timedelta(hours=1)), "Client.InternalError", T0)
    assert reason == "INSTANCE_LOST"
    assert "Client.InternalError" in message


def test_an_instance_that_never_got_its_bundle_says_so() -> None:
    reason, message = outcomes.lost_instance(job(status="PROVISIONING"), "Client.InstanceInitiatedShutdown", T0)
    assert reason == "INSTANCE_LOST"
    assert "start bundle" in message
    assert "BUNDLE_TIMEOUT_SECONDS" in message


def test_failed_uploads_are_recorded_whatever_the_outcome() -> None:
    result = {"phase": "run", "exit_code": "0", "reason": "SUCCEEDED", "outputs": "failed", "checkpoints": "ok"}
    target, fields = outcomes.from_result(job(), result)
    assert target == JobStatus.SUCCEEDED
    assert fields["upload_failures"] == ["outputs"]
    view = job(status="SUCCEEDED", upload_failures=["outputs"]).public()
    assert any("upload of its outputs failed" in note for note in view["notes"])


def test_billing_is_launch_to_end_with_a_one_minute_minimum() -> None:
    launched = job(launched_at=T0)
    assert outcomes.billing(launched, T0 + dt.timedelta(minutes=30)) == {"billed_seconds": 1800, "cost_estimate": 0.503}
    assert outcomes.billing(launched, T0 + dt.timedelta(seconds=5))["billed_seconds"] == 60
    assert outcomes.billing(job(), T0) == {}  # never launched: nothing billed
