"""Instances AWS may give you: one without a public IPv4 address (its default subnet does not auto-assign one) ends
FAILED / NO_PUBLIC_ADDRESS and is terminated, by the relay or the reconciler; while a job is PROVISIONING, why it is
not RUNNING yet is on the job (API `status_detail` and `notes`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from controlplane.adapters.logs import DynamoLogStore
from controlplane.adapters.ssh import SshConnector
from controlplane.core.models import Job, utcnow
from controlplane.service.reconcile import Reconciler, ReconcileSettings
from controlplane.service.relay import Located, RelayService, RelaySettings
from tests.integration.conftest import ControlPlane, Tenant, Workflow

TASK = {"resources": {"cpus": "2"}, "run": "sleep 1000"}
REGION = "us-east-1"


@pytest.fixture
def no_auto_assign(control_plane: ControlPlane) -> Iterator[None]:
    """Every default subnet of the region stops auto-assigning public IPv4 addresses (restored afterwards)."""
    ec2 = control_plane.admin("ec2")
    subnets = [s for s in ec2.describe_subnets()["Subnets"] if s.get("DefaultForAz")]
    for subnet in subnets:
        ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": False})
    try:
        yield
    finally:
        for subnet in subnets:
            ec2.modify_subnet_attribute(SubnetId=subnet["SubnetId"], MapPublicIpOnLaunch={"Value": True})


def launched(cp: ControlPlane, tenant: Tenant, workflow: Workflow) -> dict[str, Any]:
    response = cp.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    return dict(workflow.run(response.json()["job_id"], tenant.team_id))


def described(cp: ControlPlane, instance_id: str) -> dict[str, Any]:
    (reservation,) = cp.admin("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(reservation["Instances"][0])


def job(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    return dict(cp.call("GET", f"/jobs/{job_id}", tenant.token).json())


def reconciler(clock_offset: dt.timedelta) -> Reconciler:
    from controlplane.handlers import container

    built = container.reconciler()
    built.settings = ReconcileSettings(orphan_grace_seconds=3600.0)
    built.clock = lambda: utcnow() + clock_offset
    return built


class Seen:
    """A locator answering what EC2 says of the instance, as a test sets it; terminate() is recorded."""

    def __init__(self, located: Located) -> None:
        self.located = located
        self.terminated: list[str] = []

    def locate(self, job: Job) -> Located:
        return self.located

    def terminate(self, job: Job) -> None:
        self.terminated.append(str(job.instance_id))


def relay(cp: ControlPlane, locator: Seen, budget: float = 0.5) -> RelayService:
    from controlplane.handlers import container

    pipeline = container.pipeline()
    return RelayService(
        pipeline.jobs,
        DynamoLogStore(boto3.resource("dynamodb").Table(cp.names.table("logs"))),
        pipeline.secrets,
        locator,
        SshConnector(connect_timeout=1),
        RelaySettings(budget_seconds=budget, max_backoff_seconds=0.1),
        sleep=lambda seconds: None,
        terminator=locator,
    )


def test_the_emulator_gives_no_public_address_where_the_default_subnet_does_not_auto_assign_one(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, no_auto_assign: None
) -> None:
    state = launched(control_plane, tenant, workflow)
    assert "PublicIpAddress" not in described(control_plane, state["instance_id"])


def test_the_reconciler_ends_a_job_whose_instance_has_no_public_address_and_terminates_it(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, no_auto_assign: None
) -> None:
    state = launched(control_plane, tenant, workflow)

    assert state["job_id"] not in reconciler(dt.timedelta(seconds=30)).run().finalized  # EC2 may still assign one
    report = reconciler(dt.timedelta(minutes=3)).run()

    assert state["job_id"] in report.finalized
    assert state["instance_id"] in report.terminated
    assert described(control_plane, state["instance_id"])["State"]["Name"] in {"shutting-down", "terminated"}
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "NO_PUBLIC_ADDRESS")
    assert "map-public-ip-on-launch" in record["failure_message"]  # what to change


def test_the_relay_ends_a_job_whose_running_instance_has_no_public_address_two_minutes_after_launch(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    fresh = Seen(Located(None, "running", launched_at=utcnow()))
    assert relay(control_plane, fresh).relay(state["job_id"]).finished is False  # just launched: keep waiting
    assert fresh.terminated == []

    late = Seen(Located(None, "running", launched_at=utcnow() - dt.timedelta(minutes=2, seconds=5)))
    outcome = relay(control_plane, late).relay(state["job_id"])

    assert outcome.finished
    assert late.terminated == [state["instance_id"]]
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "NO_PUBLIC_ADDRESS")
    logs = control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()
    assert (logs["final"], logs["complete"]) == (True, False)


def test_why_a_provisioning_job_is_not_running_yet_is_on_the_job(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)

    relay(control_plane, Seen(Located(None, "pending", launched_at=utcnow()))).relay(state["job_id"])
    record = job(control_plane, tenant, state["job_id"])
    assert record["status"] == "PROVISIONING"
    assert record["status_detail"] == "the instance is pending and has no address yet"
    assert record["notes"][-1] == "not running yet: the instance is pending and has no address yet"

    # An address, but nothing listens on SSH there yet (the instance is still booting).
    relay(control_plane, Seen(Located("127.0.0.254", "running", launched_at=utcnow()))).relay(state["job_id"])
    detail = job(control_plane, tenant, state["job_id"])["status_detail"]
    assert detail.startswith("the instance is running; SSH: "), detail
