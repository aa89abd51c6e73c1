"""Lambda throttling in the real workflow definition (adapters/statemachine.py), executed by the emulator's Step
Functions: a throttled relay is retried with backoff, and when it stays throttled the job gets a note (written by
Step Functions itself) and the execution ends cleanly for the reconciler to restart the relay — never a lost job.

The throttle retriers' waits are shortened here (the same definition otherwise): the deployed ones wait minutes."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from controlplane.adapters import statemachine
from local.resources import ControlPlaneNames, create_tables


def shortened(definition: Any) -> Any:
    """The definition with every Lambda-throttling retrier waiting at most a second (attempts unchanged)."""
    if isinstance(definition, dict):
        if statemachine.THROTTLED in definition.get("ErrorEquals", []) and "MaxAttempts" in definition:
            return definition | {"IntervalSeconds": 1, "MaxDelaySeconds": 1}
        return {key: shortened(value) for key, value in definition.items()}
    if isinstance(definition, list):
        return [shortened(value) for value in definition]
    return definition


def _function(aws: Any, handler: str, env: dict[str, str]) -> str:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "in-process")
    role = aws("iam").create_role(RoleName=f"r-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    return str(
        aws("lambda").create_function(
            FunctionName=f"f-{uuid.uuid4().hex[:8]}",
            Runtime="python3.12",
            Role=role,
            Handler=handler,
            Code={"ZipFile": buffer.getvalue()},
            Environment={"Variables": env},
        )["FunctionArn"]
    )


@pytest.fixture(scope="module")
def machine(aws: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    names = ControlPlaneNames(f"th{uuid.uuid4().hex[:6]}")
    create_tables(aws("dynamodb"), names)
    attempts = tmp_path_factory.mktemp("throttle") / "attempts.jsonl"
    relay = _function(aws, "tests.integration.throttled_functions.throttled", {"TEST_OUTPUT": str(attempts)})
    other = _function(aws, "tests.integration.emulated_functions.echo", {})
    arns = {step: relay if step == "relay" else other for step in statemachine.HANDLERS}
    definition = shortened(statemachine.definition(arns, jobs_table=names.table("jobs")))
    arn = aws("stepfunctions").create_state_machine(
        name=f"{names.prefix}-jobs", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/x"
    )["stateMachineArn"]
    return {"arn": arn, "table": names.table("jobs"), "attempts": attempts}


def _job(aws: Any, table: str, status: str) -> str:
    job_id = f"job-{uuid.uuid4().hex[:10]}"
    aws("dynamodb").put_item(
        TableName=table,
        Item={"job_id": {"S": job_id}, "status": {"S": status}, "notes": {"L": [{"S": "an earlier note"}]}},
    )
    return job_id


def _resume_relay(aws: Any, machine: dict[str, Any], job_id: str) -> dict[str, Any]:
    sfn = aws("stepfunctions")
    execution = sfn.start_execution(
        stateMachineArn=machine["arn"],
        name=f"{job_id}-relay-{uuid.uuid4().hex[:6]}",
        input=json.dumps({"job_id": job_id, "resume_relay": True}),
    )["executionArn"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        described = dict(sfn.describe_execution(executionArn=execution))
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.2)
    raise AssertionError("the execution did not end")


def _notes(aws: Any, table: str, job_id: str) -> list[str]:
    item = aws("dynamodb").get_item(TableName=table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)["Item"]
    return [note["S"] for note in item.get("notes", {}).get("L", [])]


def _attempts(path: Path, job_id: str) -> int:
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if json.loads(line).get("job_id") == job_id)


def test_a_throttled_relay_is_retried_then_noted_once_on_the_job_and_the_loop_ends_cleanly(
    aws: Any, machine: dict[str, Any]
) -> None:
    job_id = _job(aws, machine["table"], "RUNNING")

    first = _resume_relay(aws, machine, job_id)

    assert first["status"] == "SUCCEEDED"  # Done: the reconciler's relay restart takes over from here
    assert _attempts(machine["attempts"], job_id) == 1 + statemachine.RELAY_THROTTLE_RETRY["MaxAttempts"]
    assert _notes(aws, machine["table"], job_id) == ["an earlier note", statemachine.RELAY_THROTTLED_NOTE]

    second = _resume_relay(aws, machine, job_id)  # a restarted loop, throttled again: the note is not repeated
    assert second["status"] == "SUCCEEDED"
    assert _notes(aws, machine["table"], job_id) == ["an earlier note", statemachine.RELAY_THROTTLED_NOTE]


def test_an_ended_job_gets_no_note(aws: Any, machine: dict[str, Any]) -> None:
    job_id = _job(aws, machine["table"], "SUCCEEDED")
    assert _resume_relay(aws, machine, job_id)["status"] == "SUCCEEDED"
    assert _notes(aws, machine["table"], job_id) == ["an earlier note"]  # a terminal record stays as it was
