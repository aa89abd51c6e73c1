"""The reconciler against the emulator: jobs whose instance vanished without an event end, instances past their
deadline and orphans are terminated, stale launches fail — with one DescribeInstances per provider × region."""

from __future__ import annotations

import datetime as dt
from typing import Any

from controlplane.core import provisioning
from controlplane.core.lifecycle import JobStatus
from controlplane.service.reconcile import Reconciler, ReconcileSettings
from tests.integration.conftest import ControlPlane, ProviderCalls, Tenant, Workflow

TASK = {"resources": {"cpus": "2"}, "run": "sleep 1000"}


def reconciler(clock_offset: dt.timedelta = dt.timedelta(0), orphan_grace: float = 0.0) -> Reconciler:
    from controlplane.handlers import container

    built = container.reconciler()
    built.settings = ReconcileSettings(launch_timeout_seconds=900, orphan_grace_seconds=orphan_grace)
    built.clock = lambda: dt.datetime.now(dt.UTC) + clock_offset
    return built


def launched(cp: ControlPlane, tenant: Tenant, workflow: Workflow) -> dict[str, Any]:
    response = cp.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    return dict(workflow.run(response.json()["job_id"], tenant.team_id))


def job(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    return dict(cp.call("GET", f"/jobs/{job_id}", tenant.token).json())


def state_of(cp: ControlPlane, instance_id: str) -> str:
    (reservation,) = cp.admin("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservation["Instances"][0]["State"]["Name"])


def test_a_job_whose_instance_ended_without_an_event_is_finalized(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)
    control_plane.admin("ec2").terminate_instances(InstanceIds=[state["instance_id"]])  # no event reaches us

    report = reconciler().run()

    assert state["job_id"] in report.finalized
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "INSTANCE_LOST")
    assert control_plane.call("GET", f"/jobs/{state['job_id']}/logs", tenant.token).json()["complete"] is True


def test_an_instance_past_its_deadline_is_terminated_and_the_job_fails_max_runtime(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    state = launched(control_plane, tenant, workflow)

    report = reconciler(clock_offset=dt.timedelta(days=1)).run()  # a day later: past max runtime + grace

    assert state["instance_id"] in report.terminated
    assert state_of(control_plane, state["instance_id"]) in {"shutting-down", "terminated"}
    record = job(control_plane, tenant, state["job_id"])
    assert (record["status"], record["failure_reason"]) == ("FAILED", "MAX_RUNTIME")


def test_an_orphan_instance_of_ours_is_terminated_after_the_grace_period(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.handlers import container

    state = launched(control_plane, tenant, workflow)
    # The job ends but its instance keeps running (e.g. its termination was lost).
    container.pipeline().jobs.transition(state["job_id"], JobStatus.CANCELLED)

    assert state["instance_id"] not in reconciler(orphan_grace=3600).run().terminated  # still within grace
    assert state["instance_id"] in reconciler(orphan_grace=0).run().terminated
    assert state_of(control_plane, state["instance_id"]) in {"shutting-down", "terminated"}


def test_a_job_that_never_launched_fails_after_the_launch_timeout(control_plane: ControlPlane, tenant: Tenant) -> None:
    response = control_plane.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    job_id = response.json()["job_id"]

    assert job_id not in reconciler().run().finalized  # fresh: left alone
    assert job_id in reconciler(clock_offset=dt.timedelta(hours=1)).run().finalized

    record = job(control_plane, tenant, job_id)
    assert (record["status"], record["failure_reason"]) == ("FAILED", "LAUNCH_ERROR")


def test_one_describe_instances_per_provider_and_region(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_calls: ProviderCalls
) -> None:
    launched(control_plane, tenant, workflow)
    launched(control_plane, tenant, workflow)
    provider_calls.calls.clear()

    report = reconciler().run()

    describes = [op for _, op in provider_calls.calls if op == "DescribeInstances"]
    assert len(describes) == report.described
    assert report.described >= 1
    tagged = control_plane.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.TEAM_TAG}", "Values": [tenant.team_id]}]
    )["Reservations"]
    assert tagged
