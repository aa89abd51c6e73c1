"""Launch errors, injected into the provider's EC2 calls: each ends in the right failure_reason with a sentence a
person can act on, or in a bounded retry that succeeds."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.core import provisioning
from controlplane.core.errors import JobFailed, UpstreamUnavailable
from controlplane.core.ports import LogProgress
from tests.integration.conftest import ControlPlane, ProviderCalls, Tenant, Workflow

G4DN_JOB = {"resources": {"accelerators": "T4"}, "run": "python train.py"}
PROFILE_NOT_READY = "Value (transformerlab-ec2-profile-x) for parameter iamInstanceProfile.name is invalid."


def capacity_message(zone: str, alternatives: str) -> str:
    return (
        f"We currently do not have sufficient g4dn.xlarge capacity in the Availability Zone you requested ({zone}). "
        "Our system will be working on provisioning additional capacity. You can currently get g4dn.xlarge "
        f"capacity by not specifying an Availability Zone in your request or choosing {alternatives}."
    )


def launch_state(cp: ControlPlane, tenant: Tenant, workflow: Workflow, body: dict[str, Any]) -> dict[str, Any]:
    response = cp.call("POST", "/jobs", tenant.token, body=body | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    job_id = response.json()["job_id"]
    return dict(workflow.bootstrap(workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)))


def job(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    return dict(cp.call("GET", f"/jobs/{job_id}", tenant.token).json())


def instances_of(cp: ControlPlane, job_id: str) -> list[dict[str, Any]]:
    reservations = cp.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [job_id]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def stored_log(job_id: str) -> LogProgress:
    from controlplane.handlers import container

    return container.pipeline().relayer.logs.progress(job_id)


def run_calls(calls: ProviderCalls) -> int:
    return [operation for _, operation in calls.calls].count("RunInstances")


def test_given_no_capacity_in_the_first_zone_then_the_zones_aws_names_are_tried(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail(
        "RunInstances", "InsufficientInstanceCapacity", capacity_message("us-east-1a", "us-east-1c, us-east-1d")
    )

    result = workflow.launch(state)

    assert result["launch"] == {"next": "relay", "wait_seconds": 0}
    record = job(control_plane, tenant, state["job_id"])
    assert record["status"] == "PROVISIONING"
    assert record["availability_zone"] == "us-east-1c"
    assert [i["InstanceId"] for i in instances_of(control_plane, state["job_id"])] == [result["instance_id"]]
    assert run_calls(provider_calls) == 2


def test_given_no_capacity_anywhere_then_capacity_with_the_zones_tried(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail(
        "RunInstances", "InsufficientInstanceCapacity", capacity_message("us-east-1a", "us-east-1b"), times=None
    )

    with pytest.raises(JobFailed):
        workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert record["status"] == "FAILED"
    assert record["failure_reason"] == "CAPACITY"
    assert "g4dn.xlarge" in record["failure_message"]
    assert "us-east-1b" in record["failure_message"]
    assert "Resubmit later" in record["failure_message"]
    assert record["failure_message"].startswith("AWS has no on-demand capacity for g4dn.xlarge in us-east-1")
    assert (record["waiting_since"], record["regions_tried"]) == (None, [])  # no job_recovery: no waiting
    assert 2 <= run_calls(provider_calls) <= 6
    assert instances_of(control_plane, state["job_id"]) == []


@pytest.mark.parametrize(
    ("code", "body", "reason", "says"),
    [
        ("VcpuLimitExceeded", G4DN_JOB, "QUOTA", "Running On-Demand G and VT instances"),
        (
            "MaxSpotInstanceCountExceeded",
            {"resources": {"accelerators": "T4", "use_spot": True}, "run": "x"},
            "QUOTA",
            "All G and VT Spot Instance Requests",
        ),
        ("UnauthorizedOperation", G4DN_JOB, "CREDENTIALS", "TransformerLabComputePolicy"),
        ("AuthFailure", G4DN_JOB, "CREDENTIALS", "credentials were rejected"),
        ("InvalidParameterCombination", G4DN_JOB, "LAUNCH_ERROR", "the AWS text"),
    ],
)
def test_given_a_launch_error_then_its_failure_reason_and_an_actionable_message(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    provider_calls: ProviderCalls,
    code: str,
    body: dict[str, Any],
    reason: str,
    says: str,
) -> None:
    state = launch_state(control_plane, tenant, workflow, body)
    provider_calls.fail("RunInstances", code, "the AWS text")

    with pytest.raises(JobFailed) as failure:
        workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", reason)
    assert says in record["failure_message"]
    assert code in record["failure_message"]
    assert failure.value.reason == reason
    logs = control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()
    # It never ran: its (empty) log is final and whole.
    assert logs == {"job_id": state["job_id"], "text": "", "next_cursor": "0", "complete": True, "final": True}
    # ...and the workflow's catch-all gives the execution the same Error / Cause.
    caught = {"Error": "JobFailed", "Cause": '{"errorMessage": "x", "errorType": "JobFailed"}'}
    assert workflow.record_failure(state, caught) == {"Error": reason, "Cause": record["failure_message"]}
    assert stored_log(state["job_id"]) == LogProgress(committed=0, complete=True, drained=True)


def test_given_a_new_profile_not_yet_propagated_then_launch_retries_with_bounded_backoff(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail("RunInstances", "InvalidParameterValue", PROFILE_NOT_READY, times=3)

    result = workflow.launch(state)

    assert result["status"] == "PROVISIONING"
    assert workflow.sleeps == [2.0, 4.0, 8.0]  # type: ignore[attr-defined]
    assert len(instances_of(control_plane, state["job_id"])) == 1


def test_given_a_token_that_would_replay_its_failure_then_each_propagation_retry_uses_a_new_recorded_token(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    """EC2 does not document that a failed RunInstances leaves its ClientToken unused: if a retry with the same token
    replayed the first failure, a new team's first launch could never succeed. Here EC2 does exactly that."""
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    failed_tokens: set[str] = set()

    def replays(params: dict[str, Any]) -> bool:
        seen = params["ClientToken"] in failed_tokens or len(failed_tokens) < 2  # the profile lags two requests
        failed_tokens.add(params["ClientToken"])
        return seen

    provider_calls.fail("RunInstances", "InvalidParameterValue", PROFILE_NOT_READY, times=None, when=replays)

    assert workflow.launch(state)["status"] == "PROVISIONING"

    tokens = [request["ClientToken"] for request in provider_calls.requests("RunInstances")]
    assert len(tokens) == 3
    assert len(set(tokens)) == 3  # a new token for every retry
    assert job(control_plane, tenant, state["job_id"])["launch_round"] == 2
    assert len(instances_of(control_plane, state["job_id"])) == 1


def test_given_a_profile_that_never_propagates_then_launch_error_within_60_seconds(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail("RunInstances", "InvalidParameterValue", PROFILE_NOT_READY, times=None)

    with pytest.raises(JobFailed):
        workflow.launch(state)

    assert sum(workflow.sleeps) <= 60  # type: ignore[attr-defined]
    record = job(control_plane, tenant, state["job_id"])
    assert record["failure_reason"] == "LAUNCH_ERROR"
    assert "instance profile" in record["failure_message"]


def test_given_throttling_then_the_step_fails_retryably_and_the_job_waits(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.")

    with pytest.raises(UpstreamUnavailable):
        workflow.launch(state)
    assert job(control_plane, tenant, state["job_id"])["status"] == "LAUNCHING"

    assert workflow.launch(state)["status"] == "PROVISIONING"  # Step Functions' retry
    assert len(instances_of(control_plane, state["job_id"])) == 1


def test_given_a_retried_step_after_a_zone_switch_then_it_resumes_with_the_same_zone_and_token(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    """Retrying must repeat the very request that may already have succeeded (same zone, same ClientToken), not
    start the zone walk again with a new token while DescribeInstances lags behind RunInstances."""
    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    provider_calls.fail("RunInstances", "InsufficientInstanceCapacity", capacity_message("us-east-1a", "us-east-1d"))
    provider_calls.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.")
    with pytest.raises(UpstreamUnavailable):
        workflow.launch(state)

    workflow.launch(state)

    first, pinned, retried = provider_calls.requests("RunInstances")
    assert "Placement" not in first
    assert pinned["Placement"] == retried["Placement"] == {"AvailabilityZone": "us-east-1d"}
    assert pinned["ClientToken"] == retried["ClientToken"] != first["ClientToken"]
    assert job(control_plane, tenant, state["job_id"])["availability_zone"] == "us-east-1d"


def test_given_the_workflow_fails_after_launch_then_the_instance_is_terminated(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = workflow.launch(launch_state(control_plane, tenant, workflow, G4DN_JOB))

    result = workflow.record_failure(state, {"Error": "States.Timeout", "Cause": "the relay step timed out"})

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "LAUNCH_ERROR")
    assert result == {"Error": "LAUNCH_ERROR", "Cause": record["failure_message"]}
    (instance,) = instances_of(control_plane, state["job_id"])
    assert instance["State"]["Name"] in {"shutting-down", "terminated"}
    # It had an instance that wrote what nobody read: the log is final, not whole.
    assert stored_log(state["job_id"]) == LogProgress(committed=0, complete=True, drained=False)
    logs = control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()
    assert (logs["final"], logs["complete"]) == (True, False)


def test_given_a_job_cancelled_before_a_retried_launch_then_the_earlier_instance_is_terminated(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    from controlplane.core.errors import JobNotActive
    from controlplane.core.lifecycle import JobStatus
    from controlplane.handlers import container

    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)

    def crash() -> None:
        raise TimeoutError("Lambda timed out right after RunInstances returned")

    provider_calls.after("RunInstances", crash)
    with pytest.raises(TimeoutError):
        workflow.launch(state)
    container.pipeline().jobs.transition(state["job_id"], JobStatus.CANCELLED)

    with pytest.raises(JobNotActive):
        workflow.launch(state)

    (instance,) = instances_of(control_plane, state["job_id"])
    assert instance["State"]["Name"] in {"shutting-down", "terminated"}


def test_given_another_attempt_recorded_a_different_instance_then_ours_is_terminated(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    from controlplane.core.lifecycle import JobStatus
    from controlplane.handlers import container

    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)
    jobs = container.pipeline().jobs
    provider_calls.after(
        "RunInstances",
        lambda: jobs.transition(state["job_id"], JobStatus.PROVISIONING, fields={"instance_id": "i-0winner"}),
    )

    result = workflow.launch(state)

    assert result["instance_id"] == "i-0winner"
    (ours,) = instances_of(control_plane, state["job_id"])
    assert ours["State"]["Name"] in {"shutting-down", "terminated"}


def test_given_little_lambda_time_left_then_launch_hands_over_to_the_workflow_retry(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    from controlplane.handlers import container

    state = launch_state(control_plane, tenant, workflow, G4DN_JOB)

    with pytest.raises(UpstreamUnavailable):
        container.pipeline().launch(state, time_left=lambda: 5.0)

    assert run_calls(provider_calls) == 0
    assert job(control_plane, tenant, state["job_id"])["status"] == "LAUNCHING"


# -- spot: use_spot auto and true ----------------------------------------------------------------------------------

AUTO_JOB = {"resources": {"accelerators": "T4", "use_spot": "auto"}, "run": "python train.py"}
SPOT_JOB = {"resources": {"accelerators": "T4", "use_spot": True}, "run": "python train.py"}
G4DN_PRICE = 0.526  # the catalog's on-demand list price of g4dn.xlarge
NO_SPOT_CAPACITY = "There is no Spot capacity available that matches your request."
SPOT_ROLE_MISSING = "The provided credentials do not have permission to create the service-linked role for EC2 Spot"


def is_spot(params: dict[str, Any]) -> bool:
    return "InstanceMarketOptions" in params


def is_on_demand(params: dict[str, Any]) -> bool:
    return "InstanceMarketOptions" not in params


def markets_requested(calls: ProviderCalls) -> list[str]:
    return ["spot" if is_spot(r) else "on-demand" for r in calls.requests("RunInstances")]


def test_given_use_spot_auto_and_spot_capacity_then_the_job_runs_on_spot(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)

    result = workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["use_spot"], record["market"]) == ("PROVISIONING", "auto", "spot")
    assert record["hourly_price"] is None  # no spot price is recorded, never a guess
    assert record["on_demand_price"] == G4DN_PRICE
    assert any("no spot price is recorded" in note for note in record["notes"])
    (instance,) = instances_of(control_plane, state["job_id"])
    assert (instance["InstanceId"], instance.get("InstanceLifecycle")) == (result["instance_id"], "spot")
    assert markets_requested(provider_calls) == ["spot"]


def test_given_use_spot_auto_and_no_spot_capacity_in_any_zone_then_one_on_demand_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", "InsufficientInstanceCapacity", NO_SPOT_CAPACITY, times=None, when=is_spot)

    result = workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["market"], record["launch_market"]) == ("PROVISIONING", "on-demand", "on-demand")
    assert record["hourly_price"] == record["on_demand_price"] == G4DN_PRICE  # the price of the market it runs in
    (note,) = [n for n in record["notes"] if n.startswith("use_spot: auto fell back to on-demand")]
    assert "no spot capacity for g4dn.xlarge in us-east-1" in note
    assert NO_SPOT_CAPACITY in note
    (instance,) = instances_of(control_plane, state["job_id"])
    assert instance["InstanceId"] == result["instance_id"]
    assert instance.get("InstanceLifecycle") is None
    # Spot in every zone first (AWS's choice, then the usual zone names), then on-demand from AWS's choice.
    requests = provider_calls.requests("RunInstances")
    assert markets_requested(provider_calls) == ["spot"] * 7 + ["on-demand"]
    assert "Placement" not in requests[0]
    assert "Placement" not in requests[-1]
    assert len({r["ClientToken"] for r in requests}) == len(requests)  # a new request, a new token


@pytest.mark.parametrize(
    ("code", "message", "says"),
    [
        ("MaxSpotInstanceCountExceeded", "Max spot instance count exceeded", "All G and VT Spot Instance Requests"),
        ("VcpuLimitExceeded", "You have requested more vCPU capacity", "the spot quota is too low"),
        ("AuthFailure.ServiceLinkedRoleCreationNotPermitted", SPOT_ROLE_MISSING, "AWSServiceRoleForEC2Spot"),
    ],
)
def test_given_use_spot_auto_and_a_spot_quota_or_role_error_then_on_demand_at_once(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    provider_calls: ProviderCalls,
    code: str,
    message: str,
    says: str,
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", code, message, times=None, when=is_spot)

    workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["market"], record["hourly_price"]) == ("PROVISIONING", "on-demand", G4DN_PRICE)
    assert any(says in note and code in note for note in record["notes"])
    assert markets_requested(provider_calls) == ["spot", "on-demand"]  # a quota is regional: no zone walk
    assert len(instances_of(control_plane, state["job_id"])) == 1


@pytest.mark.parametrize(
    ("code", "message", "reason", "says"),
    [
        ("InsufficientInstanceCapacity", NO_SPOT_CAPACITY, "CAPACITY", "use_spot: auto (falls back to on-demand)"),
        ("MaxSpotInstanceCountExceeded", "Max spot instance count exceeded", "QUOTA", "All G and VT Spot"),
        ("AuthFailure.ServiceLinkedRoleCreationNotPermitted", SPOT_ROLE_MISSING, "CREDENTIALS", "create-service"),
    ],
)
def test_given_use_spot_true_and_spot_is_unavailable_then_failed_without_on_demand(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    provider_calls: ProviderCalls,
    code: str,
    message: str,
    reason: str,
    says: str,
) -> None:
    state = launch_state(control_plane, tenant, workflow, SPOT_JOB)
    provider_calls.fail("RunInstances", code, message, times=None)

    with pytest.raises(JobFailed):
        workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", reason)
    assert says in record["failure_message"]
    assert record["market"] is None
    assert set(markets_requested(provider_calls)) == {"spot"}  # use_spot: true never launches on-demand
    assert instances_of(control_plane, state["job_id"]) == []


def test_given_use_spot_auto_and_an_on_demand_quota_error_after_spot_then_quota_not_another_round(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", "MaxSpotInstanceCountExceeded", "Max spot", times=None, when=is_spot)
    provider_calls.fail("RunInstances", "VcpuLimitExceeded", "vCPU limit", times=None, when=is_on_demand)

    with pytest.raises(JobFailed) as failure:
        workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"], failure.value.reason) == ("FAILED", "QUOTA", "QUOTA")
    message = record["failure_message"]
    assert "Running On-Demand G and VT instances" in message
    assert "use_spot: auto tried spot first: the spot quota is too low" in message
    assert markets_requested(provider_calls) == ["spot", "on-demand"]
    assert instances_of(control_plane, state["job_id"]) == []


def test_given_use_spot_auto_and_no_capacity_in_either_market_then_capacity_after_a_bounded_walk(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", "InsufficientInstanceCapacity", capacity_message("us-east-1a", "us-east-1b"),
                        times=None)  # fmt: skip

    with pytest.raises(JobFailed):
        workflow.launch(state)

    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "CAPACITY")
    assert "AWS has no on-demand capacity" in record["failure_message"]
    assert "use_spot: auto tried spot first: no spot capacity" in record["failure_message"]
    requested = markets_requested(provider_calls)
    assert requested == sorted(requested, reverse=True)  # every spot attempt before any on-demand one
    assert 2 <= requested.count("spot") <= 7
    assert 2 <= requested.count("on-demand") <= 7
    assert instances_of(control_plane, state["job_id"]) == []


def test_given_a_retried_step_after_the_fallback_then_it_resumes_on_demand_with_the_same_token(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    """A Lambda retry repeats the very on-demand request that may have succeeded (same token), instead of walking
    the spot zones again; and that token is not the spot attempt's in the same zone (IdempotentParameterMismatch)."""
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", "MaxSpotInstanceCountExceeded", "Max spot", times=None, when=is_spot)
    provider_calls.fail("RunInstances", "RequestLimitExceeded", "Request limit exceeded.", when=is_on_demand)
    with pytest.raises(UpstreamUnavailable):
        workflow.launch(state)
    assert job(control_plane, tenant, state["job_id"])["launch_market"] == "on-demand"

    workflow.launch(state)

    spot, on_demand, retried = provider_calls.requests("RunInstances")
    assert (is_spot(spot), is_spot(on_demand), is_spot(retried)) == (True, False, False)
    assert "Placement" not in spot  # both in AWS's choice of zone...
    assert "Placement" not in on_demand
    assert on_demand["ClientToken"] == retried["ClientToken"] != spot["ClientToken"]  # ...with different tokens
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["market"]) == ("PROVISIONING", "on-demand")
    assert len([n for n in record["notes"] if n.startswith("use_spot: auto fell back")]) == 1
    assert len(instances_of(control_plane, state["job_id"])) == 1


def test_given_the_lambda_dies_after_the_fallback_launch_then_the_retry_records_the_same_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    state = launch_state(control_plane, tenant, workflow, AUTO_JOB)
    provider_calls.fail("RunInstances", "InsufficientInstanceCapacity", NO_SPOT_CAPACITY, times=None, when=is_spot)

    def crash_after_on_demand() -> None:
        if is_spot(provider_calls.requests("RunInstances")[-1]):
            provider_calls.after("RunInstances", crash_after_on_demand)  # not yet: wait for the on-demand launch
            return
        raise TimeoutError("Lambda timed out right after RunInstances returned")

    provider_calls.after("RunInstances", crash_after_on_demand)
    with pytest.raises(TimeoutError):
        workflow.launch(state)
    (launched,) = instances_of(control_plane, state["job_id"])
    calls_before_retry = run_calls(provider_calls)

    result = workflow.launch(state)

    assert result["instance_id"] == launched["InstanceId"]
    assert run_calls(provider_calls) == calls_before_retry  # found by its tags: no second launch
    assert len(instances_of(control_plane, state["job_id"])) == 1
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["market"], record["hourly_price"]) == ("PROVISIONING", "on-demand", G4DN_PRICE)
    assert any(n.startswith("use_spot: auto fell back to on-demand") for n in record["notes"])  # kept across the retry
