"""End to end on the embedded control plane: the real handlers, the real state machine definition, EventBridge
rules, instance sandboxes running the real job wrapper behind a real sshd — driven over HTTP like a user would."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import boto3
import pytest

from tests.e2e.harness import NEEDS_SANDBOXES, Local, forget_process_state, start_local

pytestmark = NEEDS_SANDBOXES


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    plane, saved = start_local(tmp_path_factory.mktemp("ec2jobs"), "e2e")
    try:
        yield plane
    finally:
        plane.plane.stop()
        forget_process_state(saved)


def test_a_gpu_job_succeeds_with_every_log_line_and_its_instance_terminated(local: Local) -> None:
    lines = [f"step {i} of 200" for i in range(200)]
    task = {
        "name": "e2e-success",
        "resources": {"accelerators": "A10G:1"},
        "envs": {"GREETING": "hello from ec2jobs"},
        "setup": 'echo "setup: $GREETING"',
        "run": 'for i in $(seq 0 199); do echo "step $i of 200"; done',
    }
    job_id = local.submit(task)

    job = local.wait(job_id)

    assert (job["status"], job["exit_code"], job["instance_state"]) == ("SUCCEEDED", 0, "terminated")
    assert job["instance_type"] == "g5.xlarge"
    assert job["billed_seconds"] >= 60  # EC2's minimum
    assert job["cost_estimate"] == round(job["hourly_price"] * job["billed_seconds"] / 3600, 4)
    text, complete = local.logs(job_id)
    assert complete
    assert text == "setup: hello from ec2jobs\n" + "".join(line + "\n" for line in lines)
    changes = local.state_changes(job_id, until="SUCCEEDED")
    assert changes == [
        (None, "PENDING"),
        ("PENDING", "LAUNCHING"),
        ("LAUNCHING", "PROVISIONING"),
        ("PROVISIONING", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]


def test_a_nonzero_exit_fails_with_its_code(local: Local) -> None:
    job = local.wait(local.submit({"run": "echo about to fail; exit 3"}))
    assert (job["status"], job["failure_reason"], job["exit_code"]) == ("FAILED", "EXIT_NONZERO", 3)
    assert local.logs(job["job_id"]) == ("about to fail\n", True)
    changes = local.state_changes(job["job_id"], until="FAILED")
    assert changes[0] == (None, "PENDING")
    assert changes[-1] == ("RUNNING", "FAILED")
    assert len(changes) == 5


def test_a_setup_failure_never_runs_the_job(local: Local) -> None:
    job = local.wait(local.submit({"setup": "echo broken setup >&2; exit 2", "run": "echo should not run"}))
    assert (job["status"], job["failure_reason"], job["exit_code"]) == ("FAILED", "SETUP_FAILED", 2)
    assert local.logs(job["job_id"]) == ("broken setup\n", True)


def test_a_console_execution_with_a_raw_task_creates_and_completes_a_job(local: Local) -> None:
    sfn = boto3.client("stepfunctions")
    name = f"console-{uuid.uuid4().hex[:8]}"
    raw = {"team_id": "e2e", "provider_id": local.provider_id, "run": "echo from the console"}
    execution = sfn.start_execution(stateMachineArn=local.plane.state_machine_arn, name=name, input=json.dumps(raw))

    job_id = _job_of_execution(local, execution["executionArn"])
    job = local.wait(job_id)

    assert (job["status"], job["source"]) == ("SUCCEEDED", "console")
    assert local.logs(job_id) == ("from the console\n", True)
    _wait_execution(execution["executionArn"], "SUCCEEDED")


def test_a_job_submission_event_creates_and_completes_a_job(local: Local) -> None:
    detail = {"provider_id": local.provider_id, "run": "echo from automation", "name": "evented"}
    boto3.client("events").put_events(
        Entries=[
            {
                "Source": "ec2jobs.team.e2e",  # the team it submits for (IAM's events:source condition binds it)
                "DetailType": "Job Submission",
                "Detail": json.dumps(detail),
                "EventBusName": local.plane.event_bus_name,
            }
        ]
    )
    job_id = ""
    for _ in range(100):
        _status, page = local.call("GET", "/jobs?limit=100")
        found = [j for j in page["jobs"] if j["source"] == "event" and j["name"] == "evented"]
        if found:
            job_id = found[0]["job_id"]
            break
        time.sleep(0.2)
    assert job_id, "the event created no job"
    job = local.wait(job_id)
    assert job["status"] == "SUCCEEDED"
    assert local.logs(job_id) == ("from automation\n", True)


def _job_of_execution(local: Local, execution_arn: str) -> str:
    for _ in range(100):
        _status, page = local.call("GET", "/jobs?limit=100")
        found = [j for j in page["jobs"] if j.get("execution_arn") == execution_arn]
        if found:
            return str(found[0]["job_id"])
        time.sleep(0.2)
    raise AssertionError("the execution recorded no job")


def _wait_execution(arn: str, expected: str, timeout: float = 60) -> None:
    sfn = boto3.client("stepfunctions")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = sfn.describe_execution(executionArn=arn)["status"]
        if status != "RUNNING":
            assert status == expected
            return
        time.sleep(0.5)
    raise AssertionError(f"execution still running: {arn}")


def test_cancelling_a_running_job_keeps_its_tail_then_terminates_its_instance(local: Local) -> None:
    """Given a running job that prints a line a second and a last line when it is told to stop, When it is cancelled,
    Then it is CANCELLED at once, the relay stops it on its instance and reads its output to the end (every tick
    once, in order, then its last line: the log is complete), and the instance is terminated within the cancel
    drain bound (30 s)."""
    job_id = local.submit(
        {"run": "trap 'echo stopping; exit 143' TERM; echo started; "
                "for i in $(seq 1 300); do echo tick $i; sleep 1; done"}
    )  # fmt: skip
    for _ in range(240):
        _, job = local.call("GET", f"/jobs/{job_id}")
        text, _ = local.logs(job_id)
        if job["status"] == "RUNNING" and "tick 3\n" in text:
            break
        time.sleep(0.25)

    status, cancelled = local.call("POST", f"/jobs/{job_id}/cancel")
    cancelled_at = time.monotonic()

    assert status == 200, cancelled
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["terminated_instances"] == []  # the relay stops the job first, then the instance ends
    job = local.wait(job_id, timeout=60)  # terminal and its instance terminated
    assert time.monotonic() - cancelled_at < 30 + 5
    assert job["status"] == "CANCELLED"
    text, complete = local.logs(job_id)
    assert complete, text
    lines = text.splitlines()
    assert lines[0] == "started", text
    assert lines[-1] == "stopping", text
    ticks = [line for line in lines if line.startswith("tick ")]
    assert ticks == [f"tick {i}" for i in range(1, len(ticks) + 1)]
    assert len(ticks) >= 3
    assert local.call("POST", f"/jobs/{job_id}/cancel")[0] == 409


def test_a_job_cancelled_right_after_submission_is_left_with_no_running_instance(local: Local) -> None:
    """Cancelled while the workflow starts: Validate/Launch see CANCELLED (and Launch terminates an instance that
    started meanwhile), so nothing of it keeps running."""
    job_id = local.submit({"run": "echo never"})
    status, _ = local.call("POST", f"/jobs/{job_id}/cancel")
    assert status == 200
    time.sleep(3)  # let the workflow run its course
    _, job = local.call("GET", f"/jobs/{job_id}")
    assert job["status"] == "CANCELLED"
    ec2 = boto3.client("ec2")
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:ec2jobs:job-id", "Values": [job_id]}])["Reservations"]
    live = [i for r in tagged for i in r["Instances"] if i["State"]["Name"] not in {"shutting-down", "terminated"}]
    assert live == []


def test_a_spot_interruption_warning_ends_the_job_spot_interrupted(local: Local) -> None:
    job_id = local.submit({"resources": {"accelerators": "T4", "use_spot": True}, "run": "sleep 300"})
    for _ in range(120):
        _, job = local.call("GET", f"/jobs/{job_id}")
        if job["status"] == "RUNNING":
            break
        time.sleep(0.5)
    detail = {"instance-id": job["instance_id"], "instance-action": "terminate"}

    boto3.client("events").put_events(
        Entries=[
            {"Source": "aws.ec2", "DetailType": "EC2 Spot Instance Interruption Warning", "Detail": json.dumps(detail)}
        ]
    )
    for _ in range(60):
        _, job = local.call("GET", f"/jobs/{job_id}")
        if job["status"] == "FAILED":
            break
        time.sleep(0.2)
    assert (job["status"], job["failure_reason"]) == ("FAILED", "SPOT_INTERRUPTED")
    boto3.client("ec2").terminate_instances(InstanceIds=[job["instance_id"]])  # AWS reclaims it two minutes later
    assert local.wait(job_id)["instance_state"] == "terminated"


def _states_entered(job_id: str) -> list[str]:
    """The states the job's execution (named after the job) entered, in order."""
    sfn = boto3.client("stepfunctions")
    (machine,) = [m for m in sfn.list_state_machines()["stateMachines"] if m["name"].endswith("-jobs")]
    execution_arn = f"{machine['stateMachineArn'].replace(':stateMachine:', ':execution:')}:{job_id}"
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


def test_a_team_bootstrapped_before_skips_bootstrap_and_recovers_when_its_security_group_was_deleted(
    local: Local,
) -> None:
    from controlplane.core.provisioning import TeamResources

    first = local.wait(local.submit({"run": "echo first"}))  # bootstraps the team if no earlier test did
    assert first["status"] == "SUCCEEDED"
    second = local.wait(local.submit({"run": "echo second"}))
    assert second["status"] == "SUCCEEDED"
    entered = _states_entered(second["job_id"])
    assert entered[:4] == ["Route", "Validate", "Bootstrapped?", "Launch"]
    assert "Bootstrap" not in entered

    ec2 = boto3.client("ec2")
    name = TeamResources("transformerlab", "e2e").security_group
    (group,) = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    ec2.delete_security_group(GroupId=group["GroupId"])
    third = local.wait(local.submit({"run": "echo third"}))

    assert (third["status"], third["exit_code"]) == ("SUCCEEDED", 0)
    entered = _states_entered(third["job_id"])
    # RunInstances said the group was gone: Launch sent the job through Bootstrap, which re-created it
    assert entered[:7] == ["Route", "Validate", "Bootstrapped?", "Launch", "Launched?", "Bootstrap", "Launch"]
    (again,) = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    assert again["GroupId"] != group["GroupId"]
    (instance,) = [
        i for r in ec2.describe_instances(InstanceIds=[third["instance_id"]])["Reservations"] for i in r["Instances"]
    ]
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [again["GroupId"]]
