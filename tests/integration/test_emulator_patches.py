"""The emulator's patches to moto (local/moto_patches.py), checked against a running emulator: if a moto upgrade
breaks in-process Lambdas, Step Functions error names or EventBridge Lambda/Step Functions targets, these fail."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from local.moto_patches import target_input

T = TypeVar("T")


def _function(aws: Any, handler: str, env: dict[str, str] | None = None) -> str:
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
            Environment={"Variables": env or {}},
        )["FunctionArn"]
    )


def test_a_function_runs_in_process_with_its_environment(aws: Any) -> None:
    arn = _function(aws, "tests.integration.emulated_functions.echo", {"TEST_MARKER": "m-1"})
    response = aws("lambda").invoke(FunctionName=arn, Payload=json.dumps({"hello": "world"}))
    assert "FunctionError" not in response
    body = json.loads(response["Payload"].read())
    assert body["event"] == {"hello": "world"}
    assert body["marker"] == "m-1"


def test_a_raising_function_returns_the_lambda_error_payload(aws: Any) -> None:
    arn = _function(aws, "tests.integration.emulated_functions.fail")
    response = aws("lambda").invoke(FunctionName=arn, Payload="{}")
    assert response["FunctionError"] == "Handled"
    body = json.loads(response["Payload"].read())
    assert body["errorType"] == "ValueError"
    assert "act on" in body["errorMessage"]


def test_state_machines_execute_and_a_task_error_is_named_after_the_exception(aws: Any) -> None:
    ok, bad = (
        _function(aws, "tests.integration.emulated_functions.echo"),
        _function(aws, "tests.integration.emulated_functions.fail"),
    )
    sfn = aws("stepfunctions")
    definition = {
        "StartAt": "Echo",
        "States": {
            "Echo": {"Type": "Task", "Resource": ok, "Next": "Fail"},
            "Fail": {
                "Type": "Task",
                "Resource": bad,
                "Catch": [{"ErrorEquals": ["ValueError"], "ResultPath": "$.error", "Next": "Failed"}],
                "End": True,
            },
            "Failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
        },
    }
    machine = sfn.create_state_machine(
        name=f"m-{uuid.uuid4().hex[:6]}", definition=json.dumps(definition), roleArn="arn:aws:iam::123456789012:role/x"
    )["stateMachineArn"]
    execution = sfn.start_execution(stateMachineArn=machine, input=json.dumps({"n": 1}))["executionArn"]
    for _ in range(100):
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            break
        time.sleep(0.1)
    assert described["status"] == "FAILED"
    assert described["error"] == "ValueError"


def test_event_rules_deliver_to_lambda_and_step_functions_targets(aws: Any, tmp_path: Path) -> None:
    output = tmp_path / "event.json"
    arn = _function(aws, "tests.integration.emulated_functions.touch", {"TEST_OUTPUT": str(output)})
    sfn = aws("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"m-{uuid.uuid4().hex[:6]}",
        definition=json.dumps({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]
    events = aws("events")
    bus = f"bus-{uuid.uuid4().hex[:6]}"
    events.create_event_bus(Name=bus)
    events.put_rule(Name="to-both", EventBusName=bus, EventPattern=json.dumps({"detail-type": ["Ping"]}))
    events.put_targets(
        Rule="to-both",
        EventBusName=bus,
        Targets=[{"Id": "fn", "Arn": arn}, {"Id": "sm", "Arn": machine, "InputPath": "$.detail"}],
    )

    events.put_events(Entries=[{"Source": "test", "DetailType": "Ping", "Detail": '{"k": 1}', "EventBusName": bus}])

    def delivered() -> tuple[Any, list[dict[str, Any]]]:
        received = json.loads(output.read_text()) if output.exists() else None
        return received, sfn.list_executions(stateMachineArn=machine)["executions"]

    received, executions = _eventually(delivered, lambda got: got[0] is not None and len(got[1]) == 1)
    assert received["detail"] == {"k": 1}
    assert json.loads(sfn.describe_execution(executionArn=executions[0]["executionArn"])["input"]) == {"k": 1}


def _eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Probe until `done` holds (deliveries are asynchronous), at most `timeout` seconds; the last probe otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_target_input_follows_input_and_input_path() -> None:
    event = {"detail": {"a": 1}, "id": "e"}
    assert target_input({}, event) == event
    assert target_input({"InputPath": "$.detail"}, event) == {"a": 1}
    assert target_input({"Input": '{"fixed": true}'}, event) == {"fixed": True}
