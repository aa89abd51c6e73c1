"""A job's secrets reach its `setup`/`run` and nowhere else: not user data, not a DynamoDB item, not Step Functions
input or history, not the event bus, not an API response, not a Lambda log line, not the wrapper's own logs."""

from __future__ import annotations

import hashlib
import json
import secrets as random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.harness import NEEDS_SANDBOXES, Local, forget_process_state, instances_of, start_local

pytestmark = NEEDS_SANDBOXES


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Local, Path]]:
    workdir = tmp_path_factory.mktemp("ec2jobs-secrets")
    plane, saved = start_local(workdir, "e2e-secrets")
    try:
        yield plane, workdir
    finally:
        plane.plane.stop()
        forget_process_state(saved)


def _everything_in_dynamodb() -> str:
    client = boto3.client("dynamodb")
    dump = []
    for table in client.list_tables()["TableNames"]:
        for page in client.get_paginator("scan").paginate(TableName=table):  # a test may Scan; the product never
            dump.append(json.dumps(page["Items"], default=str))
    return "\n".join(dump)


def _everything_in_step_functions() -> str:
    client = boto3.client("stepfunctions")
    dump = []
    for machine in client.list_state_machines()["stateMachines"]:
        for execution in client.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"]:
            arn = execution["executionArn"]
            dump.append(json.dumps(client.describe_execution(executionArn=arn), default=str))
            dump.append(json.dumps(client.get_execution_history(executionArn=arn)["events"], default=str))
    return "\n".join(dump)


def _everything_on_the_bus(local: Local) -> str:
    sqs = boto3.client("sqs")
    bodies = []
    while True:
        batch = sqs.receive_message(QueueUrl=local.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = batch.get("Messages", [])
        if not messages:
            return "\n".join(bodies)
        bodies += [m["Body"] for m in messages]


def test_a_secret_reaches_the_job_and_leaks_nowhere(
    local: tuple[Local, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    client, workdir = local
    value = f"hf_{random.token_hex(16)}"
    responses: list[Any] = []

    def call(method: str, path: str, body: Any = None) -> Any:
        status, answer = client.call(method, path, body)
        responses.append(answer)
        return status, answer

    status, body = call(
        "POST",
        "/jobs",
        {
            "provider_id": client.provider_id,
            "envs": {"MODEL": "gpt2"},
            "secrets": {"HF_TOKEN": value},
            "run": 'echo "token of ${#HF_TOKEN} characters, sha256 $(printf %s "$HF_TOKEN" | sha256sum | cut -c1-12)"',
        },
    )
    assert status == 202, body
    job_id = body["job_id"]
    job = client.wait(job_id)
    responses.append(job)
    assert job["status"] == "SUCCEEDED", job
    assert job["spec"]["secrets"] == {"HF_TOKEN": "<redacted>"}
    text, complete = client.logs(job_id)
    assert complete
    assert text == f"token of {len(value)} characters, sha256 {hashlib.sha256(value.encode()).hexdigest()[:12]}\n"
    for path in (f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/logs"):
        call("GET", path)

    (instance,) = instances_of(job_id)
    box = (workdir / "instances" / instance["InstanceId"]).resolve()  # the sandbox's root (its "disk")
    assert (box / "var/lib/ec2jobs/wrapper.log").exists()
    raw = boto3.client("ec2").describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    places = {
        "user data": json.dumps(raw, default=str),
        "DynamoDB": _everything_in_dynamodb(),
        "Step Functions": _everything_in_step_functions(),
        "the event bus": _everything_on_the_bus(client),
        "API responses": json.dumps(responses, default=str),
        "Lambda and process logs": "".join(capfd.readouterr()),
        "the instance's wrapper and cloud-init logs": "".join(
            (box / name).read_text(errors="replace")
            for name in ("var/lib/ec2jobs/wrapper.log", "var/log/cloud-init-output.log", "var/lib/ec2jobs/output.log")
        ),
    }
    assert "HF_TOKEN" in places["DynamoDB"]  # its name is recorded ...
    assert places["user data"]
    assert places["Step Functions"]
    for place, text in places.items():
        assert value not in text, f"the secret's value is in {place}"
        assert value[3:] not in text, f"part of the secret's value is in {place}"
