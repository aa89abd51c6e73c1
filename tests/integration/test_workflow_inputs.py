"""Validate accepts three kinds of input (API, console execution, automation event), records jobs idempotently,
and fails clearly; Bootstrap survives a race between two first launches of a new team."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from controlplane.core import provisioning
from controlplane.core.errors import DuplicateSubmission, InvalidSpec, InvalidSubmission, JobNotActive
from tests.integration.conftest import ControlPlane, Tenant, Workflow

TASK = {"resources": {"accelerators": "L4:1"}, "run": "python train.py", "name": "from-console"}


def record(cp: ControlPlane, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = cp.call("GET", f"/jobs/{job_id}", tenant.token)
    assert response.status == 200, response.body
    return dict(response.json())


def arn(name: str) -> str:
    return f"arn:aws:states:us-east-1:123456789012:execution:ec2jobs-jobs:{name}"


# -- console executions ------------------------------------------------------------------------------------------


def test_given_a_console_input_then_the_job_is_recorded_once_by_execution_name(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    raw = TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id}
    name = f"console-{uuid.uuid4().hex[:6]}"

    state = workflow.validate(raw, name, arn(name))
    again = workflow.validate(raw, name, arn(name))  # the step retried

    assert state == again
    assert (state["instance_type"], state["image_family"]) == ("g6.xlarge", "gpu")
    job = record(control_plane, tenant, state["job_id"])
    assert (job["status"], job["source"], job["name"], job["execution_arn"]) == (
        "LAUNCHING",
        "console",
        "from-console",
        arn(name),
    )


def test_given_a_console_input_with_task_and_job_id_then_that_id_is_used(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    job_id = f"nightly-{uuid.uuid4().hex[:6]}"
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "job_id": job_id, "task": TASK}

    state = workflow.validate(raw, "any-name", arn("any-name"))

    assert state["job_id"] == job_id
    assert record(control_plane, tenant, job_id)["status"] == "LAUNCHING"


def test_given_an_invalid_console_spec_then_a_failed_job_says_why(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "job_id": f"bad-{uuid.uuid4().hex[:6]}"}
    raw |= {"resources": {"accelerators": "A100:2"}, "run": "x"}

    with pytest.raises(InvalidSpec) as failure:
        workflow.validate(raw, "bad", arn("bad"))

    job = record(control_plane, tenant, raw["job_id"])
    assert (job["status"], job["failure_reason"]) == ("FAILED", "INVALID_SPEC")
    assert "A100" in job["failure_message"]
    assert "8" in job["failure_message"]
    assert failure.value.message == job["failure_message"]


def test_given_an_unparseable_console_spec_then_the_failure_lists_the_fields(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "job_id": f"bad-{uuid.uuid4().hex[:6]}"}
    raw |= {"resources": {"memory": "lots"}, "unknown_field": 1, "envs": {"HF_TOKEN": "hf_do_not_echo"}}

    with pytest.raises(InvalidSpec):
        workflow.validate(raw, "bad2", arn("bad2"))

    job = record(control_plane, tenant, raw["job_id"])
    message = job["failure_message"]
    assert job["failure_reason"] == "INVALID_SPEC"
    assert job["spec"] is None
    assert "run: is required" in message
    assert "unknown_field" in message
    assert "resources.memory" in message
    assert "hf_do_not_echo" not in message


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"run": "x"}, "team_id and provider_id"),
        ({"team_id": "Not A Team", "provider_id": "p", "run": "x"}, "team id"),
        ({"team_id": "nobody", "provider_id": "prov-000", "run": "x"}, "does not exist"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_given_an_input_without_a_usable_owner_then_the_execution_fails_clearly(
    control_plane: ControlPlane, workflow: Workflow, raw: Any, says: str
) -> None:
    with pytest.raises(InvalidSubmission) as failure:
        workflow.validate(raw, "x", arn("x"))
    assert says in failure.value.message


def test_given_a_console_input_naming_another_teams_job_then_record_failure_leaves_that_job_alone(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, provider_keys: Any
) -> None:
    from controlplane.handlers import container

    victim = workflow.validate(TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id}, "v", arn("v"))
    other_team = f"t-{uuid.uuid4().hex[:8]}"
    container.get().teams.issue_token(other_team)
    raw = {"team_id": other_team, "provider_id": tenant.provider_id, "job_id": victim["job_id"], "run": "x"}
    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate(raw, "attack", arn("attack"))

    result = workflow.record_failure(raw, {"Error": "InvalidSubmission", "Cause": refused.value.message})

    assert result["Error"] == "InvalidSubmission"
    assert record(control_plane, tenant, victim["job_id"])["status"] == "LAUNCHING"


# -- automation events -------------------------------------------------------------------------------------------


def test_given_an_event_then_a_job_and_a_redelivery_is_a_duplicate(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Job Submission",
        "source": "my.automation",
        "detail": TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id},
    }

    state = workflow.validate(event, "rule-exec-1", arn("rule-exec-1"))
    with pytest.raises(DuplicateSubmission):
        workflow.validate(event, "rule-exec-2", arn("rule-exec-2"))

    job = record(control_plane, tenant, state["job_id"])
    assert (job["source"], job["execution_arn"]) == ("event", arn("rule-exec-1"))


def test_given_an_event_of_another_type_then_it_is_refused(control_plane: ControlPlane, workflow: Workflow) -> None:
    with pytest.raises(InvalidSubmission):
        workflow.validate({"id": "1", "detail-type": "Something Else", "detail": {}}, "x", arn("x"))


# -- API jobs ----------------------------------------------------------------------------------------------------


def test_given_a_cancelled_api_job_then_validate_stops_without_touching_it(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    from controlplane.core.lifecycle import JobStatus
    from controlplane.handlers import container

    response = control_plane.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    job_id = response.json()["job_id"]
    container.pipeline().jobs.transition(job_id, JobStatus.CANCELLED)

    with pytest.raises(JobNotActive):
        workflow.validate(workflow.api_input(job_id, tenant.team_id), job_id)
    assert record(control_plane, tenant, job_id)["status"] == "CANCELLED"


def test_given_another_teams_api_job_then_validate_refuses(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    response = control_plane.call("POST", "/jobs", tenant.token, body=TASK | {"provider_id": tenant.provider_id})
    with pytest.raises(InvalidSubmission):
        workflow.validate(workflow.api_input(response.json()["job_id"], "someone-else"), "x")


def test_given_user_data_over_16kb_gzipped_then_the_api_rejects_it(control_plane: ControlPlane, tenant: Tenant) -> None:
    import base64
    import os

    noise = base64.b64encode(os.urandom(30_000)).decode()  # incompressible
    body = {"provider_id": tenant.provider_id, "run": "echo hi", "envs": {"BLOB": noise}}

    response = control_plane.call("POST", "/jobs", tenant.token, body=body)

    assert response.status == 400
    assert "16 KB" in response.json()["message"]


# -- bootstrap race ----------------------------------------------------------------------------------------------


def test_given_two_first_launches_racing_then_both_bootstrap_the_same_resources(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    from controlplane.handlers import container

    pipeline = container.pipeline()
    provider = container.get().providers.get(tenant.team_id, tenant.provider_id)
    credentials = pipeline.secrets.get_provider_credentials(provider.secret_arn)
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def first_launch() -> None:
        try:
            start.wait()
            results.append(pipeline.bootstrapper.ensure(provider, credentials, "us-east-1"))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=first_launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert len({(r.security_group_id, r.key_name, r.instance_profile_arn) for r in results}) == 1
    names = provisioning.TeamResources("transformerlab", tenant.team_id)
    ec2, iam = control_plane.admin("ec2"), control_plane.admin("iam")
    groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [names.security_group]}])
    assert len(groups["SecurityGroups"]) == 1
    assert len(groups["SecurityGroups"][0]["IpPermissions"]) == 1
    assert len(ec2.describe_key_pairs(KeyNames=[names.key_pair])["KeyPairs"]) == 1
    profile = iam.get_instance_profile(InstanceProfileName=names.instance_profile)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [names.role]
    secret = control_plane.admin("secretsmanager").list_secrets(
        Filters=[{"Key": "name", "Values": [f"{control_plane.names.prefix}/teams/{tenant.team_id}/ssh-key"]}]
    )
    assert len(secret["SecretList"]) == 1
