"""Validate accepts three kinds of input (API, console execution, automation event), records jobs idempotently,
and fails clearly; Bootstrap survives a race between two first launches of a new team."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controlplane.core import provisioning
from controlplane.core.errors import DuplicateSubmission, InvalidSpec, InvalidSubmission, JobNotActive
from controlplane.core.ids import job_id_for_idempotency_key, job_id_for_submission
from tests.integration.conftest import ControlPlane, Tenant, Workflow, register_provider

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


def test_given_a_console_input_with_task_and_idempotency_key_then_the_id_derives_from_team_and_key(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    key = f"nightly-{uuid.uuid4().hex[:6]}"
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "idempotency_key": key, "task": TASK}

    state = workflow.validate(raw, "any-name", arn("any-name"))
    again = workflow.validate(raw, "any-name", arn("any-name"))  # the step retried

    assert state["job_id"] == again["job_id"] == job_id_for_idempotency_key(tenant.team_id, key)
    assert record(control_plane, tenant, state["job_id"])["status"] == "LAUNCHING"


def test_given_a_console_input_choosing_a_job_id_then_it_is_refused_and_the_team_sees_why(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    raw = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "job_id": "nightly-1", "task": TASK}
    name = f"chosen-{uuid.uuid4().hex[:6]}"

    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate(raw, name, arn(name))

    assert "idempotency_key" in refused.value.message
    job = record(control_plane, tenant, job_id_for_submission(tenant.team_id, "execution", name))
    assert (job["status"], job["failure_message"]) == ("FAILED", refused.value.message)
    assert control_plane.call("GET", "/jobs/nightly-1", tenant.token).status == 404


def test_given_an_invalid_console_spec_then_a_failed_job_says_why(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    key = f"bad-{uuid.uuid4().hex[:6]}"
    raw: dict[str, Any] = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "idempotency_key": key}
    raw |= {"resources": {"accelerators": "A100:2"}, "run": "x"}

    with pytest.raises(InvalidSpec) as failure:
        workflow.validate(raw, "bad", arn("bad"))

    job = record(control_plane, tenant, job_id_for_idempotency_key(tenant.team_id, key))
    assert (job["status"], job["failure_reason"]) == ("FAILED", "INVALID_SPEC")
    assert "A100" in job["failure_message"]
    assert "8" in job["failure_message"]
    assert failure.value.message == job["failure_message"]


def test_given_an_unparseable_console_spec_then_the_failure_lists_the_fields(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow
) -> None:
    key = f"bad-{uuid.uuid4().hex[:6]}"
    raw: dict[str, Any] = {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "idempotency_key": key}
    raw |= {"resources": {"memory": "lots"}, "unknown_field": 1, "envs": {"HF_TOKEN": "hf_do_not_echo"}}

    with pytest.raises(InvalidSpec):
        workflow.validate(raw, "bad2", arn("bad2"))

    job = record(control_plane, tenant, job_id_for_idempotency_key(tenant.team_id, key))
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
        "source": f"ec2jobs.team.{tenant.team_id}",
        "detail": TASK | {"provider_id": tenant.provider_id},
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


def test_a_job_larger_than_ec2_user_data_is_accepted(control_plane: ControlPlane, tenant: Tenant) -> None:
    """40 KB of incompressible env value: over EC2's 16 KB user data even gzipped, but envs travel in the start
    bundle over SSH, so only the spec's own limit applies."""
    import base64
    import os

    noise = base64.b64encode(os.urandom(30_000)).decode()  # incompressible
    body = {"provider_id": tenant.provider_id, "run": "echo hi", "envs": {"BLOB": noise}}

    response = control_plane.call("POST", "/jobs", tenant.token, body=body)

    assert response.status == 202, response.body


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


# -- trust boundary: the team is the event's source; refusals are never silent ------------------------------------


@pytest.fixture
def other(control_plane: ControlPlane, provider_keys: Any) -> Tenant:
    from controlplane.handlers import container

    team_id = f"t-{uuid.uuid4().hex[:10]}"
    token = container.get().teams.issue_token(team_id)
    keys = provider_keys()
    return Tenant(token, team_id, register_provider(control_plane, token, keys), keys)


@pytest.fixture
def rejections(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The control plane's bus (EVENT_BUS_NAME) with a rule sending Job Submission Rejected events to an SQS
    queue; returns a reader of the events that arrived (as EventBridge delivered them)."""
    from controlplane import config
    from controlplane.adapters import events

    bus = f"bus-{uuid.uuid4().hex[:8]}"
    eventbridge, sqs = control_plane.admin("events"), control_plane.admin("sqs")
    eventbridge.create_event_bus(Name=bus)
    queue_url = sqs.create_queue(QueueName=f"rejected-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": [events.SOURCE], "detail-type": [events.JOB_SUBMISSION_REJECTED]}
    eventbridge.put_rule(Name="rejected", EventBusName=bus, EventPattern=json.dumps(pattern))
    eventbridge.put_targets(Rule="rejected", EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
    monkeypatch.setenv("EVENT_BUS_NAME", bus)
    config.get.cache_clear()

    def read() -> list[dict[str, Any]]:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        return [json.loads(m["Body"]) for m in messages.get("Messages", [])]

    yield read
    monkeypatch.delenv("EVENT_BUS_NAME")
    config.get.cache_clear()


def submission(team_source: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Job Submission",
        "source": team_source,
        "account": "123456789012",
        "detail": detail,
    }


def jobs_of(control_plane: ControlPlane, tenant: Tenant) -> list[dict[str, Any]]:
    response = control_plane.call("GET", "/jobs", tenant.token, query={"limit": "100"})
    assert response.status == 200, response.body
    return list(response.json()["jobs"])


def test_given_an_event_naming_another_team_then_it_is_refused_announced_and_makes_no_job_there(
    control_plane: ControlPlane, tenant: Tenant, other: Tenant, workflow: Workflow, rejections: Any
) -> None:
    detail = TASK | {"team_id": other.team_id, "provider_id": other.provider_id, "idempotency_key": "nightly"}
    detail |= {"envs": {"HF_TOKEN": "hf_never_in_an_event"}}
    forged = submission(f"ec2jobs.team.{tenant.team_id}", detail)

    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate(forged, "forged", arn("forged"))

    assert other.team_id in refused.value.message
    assert jobs_of(control_plane, other) == []
    job = record(control_plane, tenant, job_id_for_idempotency_key(tenant.team_id, "nightly"))
    assert (job["status"], job["failure_message"], job["source"]) == ("FAILED", refused.value.message, "event")
    (event,) = rejections()
    assert (event["source"], event["detail-type"]) == ("ec2jobs", "Job Submission Rejected")
    assert event["detail"] == {
        "reason": refused.value.message,
        "code": "INVALID_SUBMISSION",
        "submission": "event",
        "team_id": tenant.team_id,
        "job_id": job["job_id"],
        "idempotency_key": "nightly",
        "event_id": forged["id"],
        "event_source": f"ec2jobs.team.{tenant.team_id}",
        "execution_arn": arn("forged"),
        "rejected_at": event["detail"]["rejected_at"],
    }
    assert "hf_never_in_an_event" not in json.dumps(event)


def test_given_an_event_with_another_teams_provider_then_that_team_gets_nothing(
    control_plane: ControlPlane, tenant: Tenant, other: Tenant, workflow: Workflow, rejections: Any
) -> None:
    event = submission(f"ec2jobs.team.{tenant.team_id}", TASK | {"provider_id": other.provider_id})

    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate(event, "x", arn("x"))

    assert refused.value.message == f"provider {other.provider_id} does not exist in team {tenant.team_id}"
    assert jobs_of(control_plane, other) == []
    (mine,) = jobs_of(control_plane, tenant)
    assert (mine["status"], mine["failure_message"]) == ("FAILED", refused.value.message)
    assert [e["detail"]["job_id"] for e in rejections()] == [mine["job_id"]]


def test_given_an_event_whose_source_names_no_team_then_it_is_refused_and_announced(
    control_plane: ControlPlane, tenant: Tenant, workflow: Workflow, rejections: Any
) -> None:
    event = submission("my.automation", TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id})

    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate(event, "x", arn("x"))

    assert "ec2jobs.team.<team_id>" in refused.value.message
    assert jobs_of(control_plane, tenant) == []
    (announced,) = rejections()
    assert announced["detail"]["team_id"] is None
    assert announced["detail"]["event_source"] == "my.automation"


def test_given_a_non_object_console_input_then_the_rejection_says_so(
    control_plane: ControlPlane, workflow: Workflow, rejections: Any
) -> None:
    with pytest.raises(InvalidSubmission) as refused:
        workflow.validate([], "x", arn("x"))

    (announced,) = rejections()
    assert announced["detail"]["reason"] == refused.value.message
    assert "JSON object" in refused.value.message
    assert (announced["detail"]["submission"], announced["detail"]["job_id"]) == ("console", None)


def test_given_a_console_run_for_one_team_then_it_cannot_take_the_id_another_teams_key_maps_to(
    control_plane: ControlPlane, tenant: Tenant, other: Tenant, workflow: Workflow
) -> None:
    key = f"deploy-{uuid.uuid4().hex[:6]}"
    theirs = job_id_for_idempotency_key(other.team_id, key)
    # Naming the id outright is refused; the same key under this team maps to another id.
    with pytest.raises(InvalidSubmission):
        workflow.validate(TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "job_id": theirs})
    mine = workflow.validate(
        TASK | {"team_id": tenant.team_id, "provider_id": tenant.provider_id, "idempotency_key": key}, "c", arn("c")
    )
    assert mine["job_id"] != theirs

    response = control_plane.call(
        "POST", "/jobs", other.token, body=TASK | {"provider_id": other.provider_id}, headers={"Idempotency-Key": key}
    )

    assert response.status == 202, response.body
    assert response.json()["job_id"] == theirs
    assert record(control_plane, other, theirs)["team_id"] == other.team_id


def test_given_an_api_submission_then_its_execution_input_holds_ids_only_and_no_env_value(
    control_plane: ControlPlane, tenant: Tenant
) -> None:
    body = TASK | {"provider_id": tenant.provider_id, "envs": {"HF_TOKEN": "hf_only_in_the_job_record"}}

    response = control_plane.call("POST", "/jobs", tenant.token, body=body)

    assert response.status == 202, response.body
    from controlplane.handlers import container

    job = container.get().jobs.get(tenant.team_id, response.json()["job_id"])
    execution = control_plane.admin("stepfunctions").describe_execution(executionArn=job.execution_arn)
    assert json.loads(execution["input"]) == {"source": "api", "job_id": job.job_id, "team_id": tenant.team_id}
    assert "hf_only_in_the_job_record" not in execution["input"]
