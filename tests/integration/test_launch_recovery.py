"""Launch with attempts, regions and waiting for capacity (issue 16), against the emulator: every attempt launches
exactly once and never adopts an earlier attempt's instance; a region without capacity hands the job to the next
region; with no capacity anywhere a job with job_recovery waits (WAITING_CAPACITY) until capacity returns or its
max_wait_minutes pass."""

from __future__ import annotations

import datetime as dt
import types
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from controlplane.core import provisioning
from controlplane.core.errors import JobFailed, JobNotActive
from controlplane.core.lifecycle import JobStatus
from controlplane.core.models import Job
from tests.integration.conftest import ControlPlane, ProviderCalls, Tenant, Workflow

G4DN = {"accelerators": "T4"}
TWO_REGIONS = ["us-east-1", "us-west-2"]
WAITING_JOB: dict[str, Any] = {
    "resources": G4DN | {"region": TWO_REGIONS},
    "run": "python train.py",
    "job_recovery": {"max_wait_minutes": 240},
}


class RegionCapacity:
    """The provider's EC2, region by region: RunInstances answers InsufficientInstanceCapacity (HTTP 500, as EC2
    sends it) in every zone of the regions in `none`; a region taken out of `none` has capacity again."""

    def __init__(self) -> None:
        self.none: set[str] = set()
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (region, RunInstances parameters) in call order
        self.on_request: Callable[[], None] | None = None  # runs as each RunInstances reaches EC2

    def wrap(self, factory: Callable[..., Any]) -> Callable[..., Any]:
        def make(service: str, credentials: Any, region: str) -> Any:
            client = factory(service, credentials, region)
            if service != "ec2":
                return client

            def parameters(params: dict[str, Any], **_: Any) -> None:
                self.requests.append((region, dict(params)))

            def answer(**_: Any) -> Any:
                return self._answer(region)

            client.meta.events.register("before-parameter-build.ec2.RunInstances", parameters)
            client.meta.events.register("before-call.ec2.RunInstances", answer)
            return client

        return make

    def _answer(self, region: str) -> Any:
        if self.on_request is not None:
            self.on_request()
        if region not in self.none:
            return None
        zone = self.requests[-1][1].get("Placement", {}).get("AvailabilityZone") or f"{region}a"
        others = ", ".join(f"{region}{letter}" for letter in "abcdef" if f"{region}{letter}" != zone)
        message = (
            f"We currently do not have sufficient g4dn.xlarge capacity in the Availability Zone you requested ({zone})."
            " Our system will be working on provisioning additional capacity. You can currently get g4dn.xlarge "
            f"capacity by not specifying an Availability Zone in your request or choosing {others}."
        )
        parsed = {
            "Error": {"Code": "InsufficientInstanceCapacity", "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        }
        return types.SimpleNamespace(status_code=500, headers={}, content=b""), parsed

    def tokens(self, region: str | None = None) -> list[str]:
        return [params["ClientToken"] for where, params in self.requests if region in {None, where}]


@pytest.fixture
def capacity(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> RegionCapacity:
    from controlplane.adapters import aws

    injector = RegionCapacity()
    monkeypatch.setattr(aws, "provider_client", injector.wrap(aws.provider_client))
    return injector


def submit(cp: ControlPlane, tenant: Tenant, body: dict[str, Any]) -> str:
    response = cp.call("POST", "/jobs", tenant.token, body=body | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    return str(response.json()["job_id"])


def launch_state(cp: ControlPlane, tenant: Tenant, workflow: Workflow, body: dict[str, Any]) -> dict[str, Any]:
    job_id = submit(cp, tenant, body)
    return dict(workflow.bootstrap(workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)))


def view(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = cp.call("GET", f"/jobs/{job_id}", tenant.token)
    assert response.status == 200, response.body
    return dict(response.json())


def stored(job_id: str) -> Job:
    from controlplane.handlers import container

    job = container.pipeline().jobs.get(job_id)
    assert job is not None
    return job


def jobs() -> Any:
    from controlplane.handlers import container

    return container.pipeline().jobs


def instances_of(job_id: str, region: str = "us-east-1") -> list[dict[str, Any]]:
    reservations = boto3.client("ec2", region_name=region).describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [job_id]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def next_attempt(job_id: str) -> Job:
    """What the workflow's Recover step does between attempts (service/recovery.py), minus terminating the ended
    attempt's instance: the job goes PROVISIONING → RECOVERING → LAUNCHING with the next attempt number."""
    store = jobs()
    job = store.transition(job_id, JobStatus.RECOVERING, fields={"status_detail": "attempt 1 ended (test)"})
    cleared = dict.fromkeys(["instance_id", "instance_state", "availability_zone", "launch_zone", "launch_market"])
    fields = cleared | {"attempt": job.attempt + 1, "launch_round": 0}
    launching: Job = store.transition(job_id, JobStatus.LAUNCHING, fields=fields)
    return launching


def run_launch(workflow: Workflow, state: dict[str, Any]) -> dict[str, Any]:
    """Launch, bootstrapping each region the launch moves on to (the workflow's Launch → Bootstrap → Launch loop),
    until the launch says relay or wait."""
    for _ in range(4):
        state = dict(workflow.launch(state))
        if state["launch"]["next"] != "bootstrap":
            return state
        state = dict(workflow.bootstrap(state))
    raise AssertionError(f"the launch kept asking for a bootstrap: {state}")


# -- attempts launch exactly once each --------------------------------------------------------------------------------


def test_given_attempt_2_then_its_own_token_and_a_retried_step_finds_its_own_instance(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    provider_calls: ProviderCalls,
    capacity: RegionCapacity,
) -> None:
    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN, "run": "x"})
    first = workflow.launch(state)
    assert first["launch"] == {"next": "relay", "wait_seconds": 0}
    (attempt_1,) = instances_of(state["job_id"])
    boto3.client("ec2").terminate_instances(InstanceIds=[attempt_1["InstanceId"]])  # as the Recover step does
    next_attempt(state["job_id"])

    def crash() -> None:
        raise TimeoutError("Lambda timed out right after RunInstances returned")

    provider_calls.after("RunInstances", crash)
    with pytest.raises(TimeoutError):
        workflow.launch(state)
    retried = workflow.launch(state)  # Step Functions' retry of the step

    token_1, token_2 = capacity.tokens()
    assert token_1 != token_2  # attempt 2 is a new request: EC2 must not answer it with attempt 1's instance
    live = [i for i in instances_of(state["job_id"]) if i["State"]["Name"] == "running"]
    (attempt_2,) = live
    assert tags(attempt_2)[provisioning.ATTEMPT_TAG] == "2"
    assert tags(attempt_1)[provisioning.ATTEMPT_TAG] == "1"
    assert retried["instance_id"] == attempt_2["InstanceId"]
    assert retried["launch"] == {"next": "relay", "wait_seconds": 0}
    assert len(capacity.requests) == 2  # the retried step found its instance by its tags: no third launch
    job = stored(state["job_id"])
    assert (job.status, job.attempt, job.instance_id) == (JobStatus.PROVISIONING, 2, attempt_2["InstanceId"])
    volume_id = attempt_2["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    (volume,) = boto3.client("ec2").describe_volumes(VolumeIds=[volume_id])["Volumes"]
    assert tags(volume)[provisioning.ATTEMPT_TAG] == "2"


@pytest.mark.parametrize("cached", [True, False], ids=["cached record", "no cached record"])
def test_given_a_recovering_job_then_recover_passes_the_cached_bootstrap_record_and_launch_needs_no_bootstrap(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity, cached: bool
) -> None:
    """Recover, like Validate, hands Launch the team's cached bootstrap record for the next attempt's region (the
    `Bootstrapped?` choice then skips Bootstrap); without one, the state has none and the workflow bootstraps."""
    from controlplane.handlers import container

    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN, "run": "x"})
    workflow.launch(state)
    (attempt_1,) = instances_of(state["job_id"])
    jobs().transition(state["job_id"], JobStatus.RECOVERING, fields={"status_detail": "attempt 1 ended (test)"})
    if not cached:
        container.pipeline().bootstrapper.forget(tenant.provider_id, "us-east-1")

    recovered = workflow.recover(state["job_id"], "arn:aws:states:us-east-1:123456789012:execution:x:y")

    assert (recovered["attempt"], stored(state["job_id"]).status) == (2, JobStatus.LAUNCHING)
    (reaped,) = instances_of(state["job_id"])
    assert (reaped["InstanceId"], reaped["State"]["Name"] in {"shutting-down", "terminated"}) == (
        attempt_1["InstanceId"],
        True,
    )
    if not cached:
        assert "bootstrap" not in recovered
        return
    assert recovered["bootstrap"] == state["bootstrap"]
    assert recovered["bootstrap_source"] == "cache"
    launched = workflow.launch(recovered)
    assert launched["launch"] == {"next": "relay", "wait_seconds": 0}
    assert stored(state["job_id"]).attempt == 2
    by_id = {i["InstanceId"]: i for i in instances_of(state["job_id"])}
    assert tags(by_id[launched["instance_id"]])[provisioning.ATTEMPT_TAG] == "2"


def test_given_attempt_1_still_running_when_attempt_2_launches_then_it_is_terminated_not_adopted(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN, "run": "x"})
    workflow.launch(state)
    (attempt_1,) = instances_of(state["job_id"])
    next_attempt(state["job_id"])  # ...and the Recover step did not get to terminate attempt 1's instance

    result = workflow.launch(state)

    by_id = {i["InstanceId"]: i for i in instances_of(state["job_id"])}
    assert result["instance_id"] != attempt_1["InstanceId"]
    assert by_id[attempt_1["InstanceId"]]["State"]["Name"] in {"shutting-down", "terminated"}
    assert tags(by_id[result["instance_id"]])[provisioning.ATTEMPT_TAG] == "2"
    assert by_id[result["instance_id"]]["State"]["Name"] in {"pending", "running"}
    assert stored(state["job_id"]).instance_id == result["instance_id"]


def test_given_a_launch_step_of_an_ended_attempt_then_it_records_nothing_and_leaves_no_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    """A step of attempt 1 still running (say, a Lambda that Step Functions gave up on) when attempt 2 began: its
    writes are conditional on the attempt, so it cannot record its instance over attempt 2's."""
    from controlplane.core.models import BootstrapRecord
    from controlplane.handlers import container

    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN, "run": "x"})
    stale = stored(state["job_id"])  # attempt 1, LAUNCHING
    pipeline = container.pipeline()
    jobs().transition(state["job_id"], JobStatus.PROVISIONING, fields={"instance_id": "i-0attempt1"})
    next_attempt(state["job_id"])
    _, credentials = pipeline._provider(stale)

    with pytest.raises(JobNotActive):
        pipeline.launcher.launch(stale, credentials, BootstrapRecord.model_validate(state["bootstrap"]))

    (launched,) = instances_of(state["job_id"])
    assert launched["State"]["Name"] in {"shutting-down", "terminated"}
    job = stored(state["job_id"])
    assert (job.status, job.attempt, job.instance_id) == (JobStatus.LAUNCHING, 2, None)


# -- regions and waiting for capacity -------------------------------------------------------------------------------


def test_given_no_capacity_in_the_first_region_then_the_next_region_is_bootstrapped_and_launched(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN | {"region": TWO_REGIONS}, "run": "x"})
    capacity.none = {"us-east-1"}

    moved = workflow.launch(state)

    assert moved["launch"] == {"next": "bootstrap", "wait_seconds": 0}
    job = stored(state["job_id"])
    assert (job.status, job.region, job.regions_tried) == (JobStatus.LAUNCHING, "us-west-2", ["us-east-1"])
    assert (job.launch_zone, job.launch_market) == (None, None)
    assert "no capacity for g4dn.xlarge in us-east-1: trying us-west-2" in job.notes
    east = capacity.tokens("us-east-1")
    assert 2 <= len(east) <= 7  # AWS's choice, then the zones it named

    bootstrapped = workflow.bootstrap(moved)
    assert bootstrapped["bootstrap"]["region"] == "us-west-2"
    assert bootstrapped["bootstrap"]["security_group_id"] != state["bootstrap"]["security_group_id"]
    result = workflow.launch(bootstrapped)

    assert result["launch"] == {"next": "relay", "wait_seconds": 0}
    (instance,) = instances_of(state["job_id"], "us-west-2")
    assert instance["InstanceId"] == result["instance_id"]
    assert instances_of(state["job_id"], "us-east-1") == []
    (west,) = capacity.tokens("us-west-2")
    assert west not in east  # a request in another region is another request
    record = view(control_plane, tenant, state["job_id"])
    assert (record["status"], record["region"], record["regions_tried"]) == ("PROVISIONING", "us-west-2", [])
    assert record["availability_zone"].startswith("us-west-2")


def test_given_use_spot_auto_then_each_region_walks_spot_before_on_demand(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    body = {"resources": G4DN | {"region": TWO_REGIONS, "use_spot": "auto"}, "run": "x"}
    state = launch_state(control_plane, tenant, workflow, body)
    capacity.none = {"us-east-1"}

    result = run_launch(workflow, state)

    markets = [("spot" if "InstanceMarketOptions" in params else "on-demand", region) for region, params in
               capacity.requests]  # fmt: skip
    east = [market for market, region in markets if region == "us-east-1"]
    assert east == sorted(east, reverse=True)  # every spot request in us-east-1 before any on-demand one there
    assert {"spot", "on-demand"} <= set(east)
    assert [market for market, region in markets if region == "us-west-2"] == ["spot"]  # spot first again
    record = view(control_plane, tenant, state["job_id"])
    assert (record["status"], record["region"], record["market"]) == ("PROVISIONING", "us-west-2", "spot")
    assert result["instance_id"] == record["instance_id"]
    # The walk's notes in us-east-1 survive the move to us-west-2.
    assert any(note.startswith("use_spot: auto fell back to on-demand: no spot capacity") for note in record["notes"])
    assert "no capacity for g4dn.xlarge in us-east-1: trying us-west-2" in record["notes"]


def test_given_a_launch_for_a_region_not_bootstrapped_then_it_asks_for_a_bootstrap_and_launches_nothing(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, {"resources": G4DN | {"region": TWO_REGIONS}, "run": "x"})
    jobs().update(state["job_id"], {"region": "us-west-2"})

    assert workflow.launch(state)["launch"] == {"next": "bootstrap", "wait_seconds": 0}
    assert capacity.requests == []


def test_given_no_capacity_anywhere_with_max_wait_then_waiting_capacity_until_it_returns(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, WAITING_JOB)
    capacity.none = {"us-east-1", "us-west-2"}
    before = dt.datetime.now(dt.UTC)

    waiting = run_launch(workflow, state)

    assert waiting["launch"] == {"next": "wait", "wait_seconds": 60}
    assert waiting["status"] == "WAITING_CAPACITY"
    job = stored(state["job_id"])
    assert job.status == JobStatus.WAITING_CAPACITY
    assert job.waiting_since is not None
    assert job.capacity_retry_at is not None
    assert before <= job.waiting_since <= job.capacity_retry_at - dt.timedelta(seconds=60)
    assert (job.region, job.regions_tried, job.capacity_round) == ("us-east-1", [], 1)  # the next round starts over
    assert job.status_detail is not None
    assert job.status_detail.startswith("no capacity for g4dn.xlarge in us-east-1 and us-west-2 (")
    assert f"trying again at {job.capacity_retry_at:%H:%M:%S} UTC" in job.status_detail
    until = job.waiting_since + dt.timedelta(minutes=240)
    day = f"{until:%Y-%m-%d} " if until.date() != job.capacity_retry_at.date() else ""  # past midnight: its date too
    assert f"until {day}{until:%H:%M} UTC (max_wait_minutes 240)" in job.status_detail
    assert f"waiting for capacity: {job.status_detail}" in view(control_plane, tenant, state["job_id"])["notes"]
    first_round = capacity.tokens()

    still_waiting = run_launch(workflow, waiting)  # the workflow's Wait state ended: another round, no capacity

    assert still_waiting["launch"]["next"] == "wait"
    again = stored(state["job_id"])
    assert (again.status, again.capacity_round) == (JobStatus.WAITING_CAPACITY, 2)
    assert again.waiting_since == job.waiting_since  # the wait counts from the first round
    assert again.capacity_retry_at is not None
    assert again.capacity_retry_at >= job.capacity_retry_at
    second_round = capacity.tokens()[len(first_round) :]
    assert not set(second_round) & set(first_round)  # each round sends new requests (new tokens)

    capacity.none = set()  # capacity is back
    launched = run_launch(workflow, still_waiting)

    assert launched["launch"] == {"next": "relay", "wait_seconds": 0}
    record = view(control_plane, tenant, state["job_id"])
    assert (record["status"], record["region"], record["instance_id"]) == (
        "PROVISIONING",
        "us-east-1",
        launched["instance_id"],
    )
    for cleared in ("waiting_since", "capacity_retry_at", "status_detail"):
        assert record[cleared] is None, cleared
    assert (record["regions_tried"], record["capacity_round"]) == ([], 0)
    assert not any(note.startswith("not running yet") for note in record["notes"])
    (instance,) = instances_of(state["job_id"])
    assert instance["InstanceId"] == launched["instance_id"]


def test_given_max_wait_passed_then_capacity_naming_the_regions_and_the_wait(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, WAITING_JOB)
    capacity.none = {"us-east-1", "us-west-2"}
    waiting = run_launch(workflow, state)
    assert waiting["status"] == "WAITING_CAPACITY"
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=241)
    jobs().update(state["job_id"], {"waiting_since": since})  # four hours and a minute later

    with pytest.raises(JobFailed):
        run_launch(workflow, waiting)

    record = view(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "CAPACITY")
    message = record["failure_message"]
    assert message.startswith("AWS had no capacity for g4dn.xlarge in us-east-1 and us-west-2; waited 241 minutes")
    assert "(job_recovery.max_wait_minutes 240)" in message
    assert "AWS has no on-demand capacity for g4dn.xlarge in us-west-2" in message  # what the last walk found
    assert instances_of(state["job_id"]) == []
    assert instances_of(state["job_id"], "us-west-2") == []


@pytest.mark.parametrize(
    ("body", "starts"),
    [
        ({"resources": G4DN, "run": "x"}, "AWS has no on-demand capacity for g4dn.xlarge in us-east-1 right now"),
        (
            {"resources": G4DN, "run": "x", "job_recovery": {"max_wait_minutes": 0}},
            "AWS has no on-demand capacity for g4dn.xlarge in us-east-1 right now",
        ),
        (
            {"resources": G4DN | {"region": TWO_REGIONS}, "run": "x"},
            "AWS had no capacity for g4dn.xlarge in us-east-1 and us-west-2. AWS has no on-demand capacity",
        ),
    ],
)
def test_given_no_capacity_and_no_wait_then_capacity_at_once(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    capacity: RegionCapacity,
    body: dict[str, Any],
    starts: str,
) -> None:
    state = launch_state(control_plane, tenant, workflow, body)
    capacity.none = {"us-east-1", "us-west-2"}

    with pytest.raises(JobFailed):
        run_launch(workflow, state)

    record = view(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "CAPACITY")
    assert record["failure_message"].startswith(starts)
    assert "waited" not in record["failure_message"]
    assert record["waiting_since"] is None


def test_given_a_job_cancelled_while_waiting_for_capacity_then_it_is_never_launched(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, capacity: RegionCapacity
) -> None:
    state = launch_state(control_plane, tenant, workflow, WAITING_JOB | {"resources": G4DN})
    capacity.none = {"us-east-1"}
    waiting = run_launch(workflow, state)
    assert waiting["status"] == "WAITING_CAPACITY"
    response = control_plane.call("POST", f"/jobs/{state['job_id']}/cancel", tenant.token)
    assert response.status == 200, response.body
    capacity.none = set()
    requests_before = len(capacity.requests)

    with pytest.raises(JobNotActive):
        workflow.launch(waiting)

    assert len(capacity.requests) == requests_before
    assert instances_of(state["job_id"]) == []
    assert view(control_plane, tenant, state["job_id"])["status"] == "CANCELLED"


def test_given_a_job_cancelled_during_the_walk_then_no_further_zone_or_region_is_tried(
    control_plane: ControlPlane,
    tenant: Tenant,
    workflow: Workflow,
    capacity: RegionCapacity,
) -> None:
    state = launch_state(control_plane, tenant, workflow, WAITING_JOB)
    capacity.none = {"us-east-1", "us-west-2"}
    capacity.on_request = lambda: jobs().transition(state["job_id"], JobStatus.CANCELLED)  # during the first request

    with pytest.raises(JobNotActive):
        workflow.launch(state)

    assert len(capacity.requests) == 1
    job = stored(state["job_id"])
    assert (job.status, job.region, job.waiting_since) == (JobStatus.CANCELLED, "us-east-1", None)
