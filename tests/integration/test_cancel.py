"""POST /jobs/{id}/cancel against the emulator: CANCELLED at once, instances terminated, 409 once ended, 404 for
another team's job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.core import provisioning
from tests.integration.conftest import ControlPlane, Tenant, Workflow

TASK = {"resources": {"cpus": "2"}, "run": "sleep 1000"}


def submit(cp: ControlPlane, tenant: Tenant) -> str:
    response = cp.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    assert response.status == 202, response.body
    return str(response.json()["job_id"])


def instances(cp: ControlPlane, job_id: str) -> list[dict[str, Any]]:
    reservations = cp.admin("ec2").describe_instances(
        Filters=[{"Name": f"tag:{provisioning.JOB_TAG}", "Values": [job_id]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def test_cancelling_a_launched_job_terminates_its_instance(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = submit(control_plane, tenant)
    state = workflow.run(job_id, tenant.team_id)

    response = control_plane.call("POST", f"/jobs/{job_id}/cancel", tenant.token)

    assert response.status == 200, response.body
    body = response.json()
    assert (body["status"], body["terminated_instances"]) == ("CANCELLED", [state["instance_id"]])
    (instance,) = instances(control_plane, job_id)
    assert instance["State"]["Name"] in {"shutting-down", "terminated"}
    again = control_plane.call("POST", f"/jobs/{job_id}/cancel", tenant.token)
    assert again.status == 409
    assert "already ended (CANCELLED)" in again.json()["message"]


def test_a_pending_job_is_cancelled_without_an_instance_and_the_workflow_then_stops(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    import pytest

    from controlplane.core.errors import JobNotActive

    job_id = submit(control_plane, tenant)
    response = control_plane.call("POST", f"/jobs/{job_id}/cancel", tenant.token)
    assert response.json()["terminated_instances"] == []
    with pytest.raises(JobNotActive):
        workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    assert instances(control_plane, job_id) == []
    logs = control_plane.call("GET", f"/jobs/{job_id}/logs", tenant.token).json()
    assert logs["complete"] is True


def test_another_teams_job_cannot_be_cancelled(
    control_plane: ControlPlane, tenant: Tenant, new_team: Callable[[], str]
) -> None:
    job_id = submit(control_plane, tenant)
    assert control_plane.call("POST", f"/jobs/{job_id}/cancel", new_team()).status == 404
    assert control_plane.call("GET", f"/jobs/{job_id}", tenant.token).json()["status"] == "PENDING"
