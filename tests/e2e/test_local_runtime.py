"""End to end on the embedded control plane: the real handlers, the real state machine definition, EventBridge
rules, instance sandboxes running the real job wrapper behind a real sshd — driven over HTTP like a user would."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from local import runtime, sshd

# Instance sandboxes run sshd on 127.0.0.x:22 (as on EC2), which needs root and OpenSSH; `make test` has both.
_READY = any(Path(p).exists() for p in sshd.SSHD_CANDIDATES) and os.geteuid() == 0
if not _READY and os.environ.get("EC2JOBS_REQUIRE_SSHD") == "1":
    raise RuntimeError("the e2e tests need OpenSSH sshd and root (make test installs sshd; run it as root)")
pytestmark = pytest.mark.skipif(not _READY, reason="needs OpenSSH sshd and root (sandboxes listen on port 22)")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


@dataclass
class Local:
    plane: runtime.LocalControlPlane
    provider_id: str
    queue_url: str

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - loopback URL of the local API
            self.plane.api_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.plane.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def submit(self, task: dict[str, Any]) -> str:
        status, body = self.call("POST", "/jobs", task | {"provider_id": self.provider_id})
        assert status == 202, body
        return str(body["job_id"])

    def wait(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, job = self.call("GET", f"/jobs/{job_id}")
            assert status == 200, job
            if job["status"] in TERMINAL and job.get("instance_state") in {None, "terminated"}:
                return dict(job)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not finish: {job}")

    def logs(self, job_id: str) -> tuple[str, bool]:
        text, cursor, complete = "", "", False
        for _ in range(1000):
            status, page = self.call("GET", f"/jobs/{job_id}/logs?after={cursor}")
            assert status == 200, page
            text += page["text"]
            cursor, complete = page["next_cursor"], page["complete"]
            if complete or not page["text"]:
                break
        return text, complete

    def state_changes(self, job_id: str, until: str, timeout: float = 30) -> list[tuple[str | None, str]]:
        """(previous_status, status) of the job's Job State Change events, from the test rule's queue."""
        sqs = boto3.client("sqs")
        seen: list[dict[str, Any]] = list(_STASH)  # events of this job read while waiting for another one
        _STASH.clear()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for message in sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", []):
                seen.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            mine = [e["detail"] for e in seen if e["detail"]["job_id"] == job_id]
            if any(d["status"] == until for d in mine):
                break
            time.sleep(0.2)
        _STASH.extend(e for e in seen if e["detail"]["job_id"] != job_id)
        return [(d["previous_status"], d["status"]) for d in mine]


_STASH: list[dict[str, Any]] = []


def _forget_process_state(saved: dict[str, str]) -> None:
    """runtime.start() configures this process (env, cached clients/config, the handlers' services): undo it so the
    other test modules see their own emulator."""
    from controlplane import config
    from controlplane.adapters import aws
    from controlplane.handlers import container

    os.environ.clear()
    os.environ.update(saved)
    config.get.cache_clear()
    aws.client.cache_clear()
    aws.resource.cache_clear()
    container.use(None)
    boto3.setup_default_session()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    saved = dict(os.environ)
    plane = runtime.start(workdir=tmp_path_factory.mktemp("ec2jobs"), team_id="e2e")
    try:
        key_id, secret = runtime.create_provider_user()
        request = {"name": "emulated", "region": "us-east-1", "access_key_id": key_id, "secret_access_key": secret}
        holder = Local(plane, "", "")
        status, body = holder.call("POST", "/providers", request)
        assert status == 201, body
        sqs = boto3.client("sqs")
        queue_url = sqs.create_queue(QueueName=f"job-events-{uuid.uuid4().hex[:6]}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events = boto3.client("events")
        events.put_rule(
            Name="test-job-events",
            EventBusName=plane.event_bus_name,
            EventPattern=json.dumps({"source": ["ec2jobs"], "detail-type": ["Job State Change"]}),
        )
        events.put_targets(
            Rule="test-job-events", EventBusName=plane.event_bus_name, Targets=[{"Id": "q", "Arn": queue_arn}]
        )
        yield Local(plane, str(body["provider_id"]), queue_url)
    finally:
        plane.stop()
        _forget_process_state(saved)


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
    detail = {"team_id": "e2e", "provider_id": local.provider_id, "run": "echo from automation", "name": "evented"}
    boto3.client("events").put_events(
        Entries=[
            {
                "Source": "my.automation",
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


def test_cancelling_a_running_job_terminates_its_instance_and_completes_its_log(local: Local) -> None:
    job_id = local.submit({"run": "echo started; for i in $(seq 1 300); do echo tick $i; sleep 1; done"})
    for _ in range(120):
        _, job = local.call("GET", f"/jobs/{job_id}")
        text, _ = local.logs(job_id)
        if job["status"] == "RUNNING" and "started" in text:
            break
        time.sleep(0.5)

    status, cancelled = local.call("POST", f"/jobs/{job_id}/cancel")

    assert status == 200, cancelled
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["terminated_instances"] == [cancelled["instance_id"]]
    job = local.wait(job_id)  # terminal and its instance terminated
    assert job["status"] == "CANCELLED"
    text, complete = local.logs(job_id)
    assert complete
    assert text.startswith("started\n")
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
