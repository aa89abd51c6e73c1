"""The job workflow as deployed: a Standard state machine whose definition is controlplane.adapters.statemachine's,
with each Task on the right function, plus logging, tracing and a timeout."""

from __future__ import annotations

import json
import re
from typing import Any

from controlplane.adapters import statemachine
from controlplane.core.spec import MAX_RUNTIME_LIMIT_MINUTES
from tests.infra.conftest import Synth

PLACEHOLDER = re.compile(r"^\$\{(\w+)\}$")


def _state_machine(synth: Synth, construct: Any = None) -> dict[str, Any]:
    """The job workflow's (or the given construct's) state machine properties."""
    machine = construct if construct is not None else synth.stack.workflow.state_machine
    return dict(synth.resources[synth.logical_id(machine)]["Properties"])


def substituted(definition: Any, substitutions: dict[str, Any]) -> Any:
    """The definition with every "${key}" string replaced by its substitution (what Step Functions does)."""
    if isinstance(definition, dict):
        return {k: substituted(v, substitutions) for k, v in definition.items()}
    if isinstance(definition, list):
        return [substituted(v, substitutions) for v in definition]
    if isinstance(definition, str) and (match := PLACEHOLDER.match(definition)):
        return substitutions[match.group(1)]
    return definition


def deployed_definition(synth: Synth) -> dict[str, Any]:
    machine = _state_machine(synth)
    assert isinstance(machine["DefinitionString"], str)  # a literal document, nothing spliced in by CloudFormation
    result: dict[str, Any] = substituted(json.loads(machine["DefinitionString"]), machine["DefinitionSubstitutions"])
    return result


def step_arns(synth: Synth) -> dict[str, Any]:
    """Each step's function ARN, found by the function's handler (not by CDK's names)."""
    return {
        step: {"Fn::GetAtt": [synth.function(handler)[0], "Arn"]} for step, handler in statemachine.HANDLERS.items()
    }


def jobs_table(synth: Synth) -> dict[str, Any]:
    return {"Ref": synth.logical_id(synth.stack.storage.jobs)}


def test_the_definition_is_the_single_source_with_the_right_function_per_step(synth: Synth) -> None:
    definition = deployed_definition(synth)
    assert definition == statemachine.definition(step_arns(synth), jobs_table=jobs_table(synth))
    assert definition["States"]["RelayThrottled"]["Parameters"]["TableName"] == jobs_table(synth)
    timeout = definition["TimeoutSeconds"]
    # The longest job (7 days of max_runtime_minutes) with boot, drain and relay retries must fit.
    assert timeout >= MAX_RUNTIME_LIMIT_MINUTES * 60 + 6 * 3600


def test_the_states_in_order_with_retry_and_catch(synth: Synth) -> None:
    states = deployed_definition(synth)["States"]
    arns = step_arns(synth)
    assert list(states) == [
        "Route",
        "Validate",
        "Bootstrapped?",
        "Rejected",
        "Bootstrap",
        "Launch",
        "Launched?",
        "WaitForCapacity",
        "Relay",
        "RelayThrottled",
        "Drained?",
        "Recover",
        "Done",
        "RecordFailure",
        "Failed",
    ]
    assert deployed_definition(synth)["StartAt"] == "Route"
    assert states["Route"]["Default"] == "Validate"
    order = {
        "Validate": "Bootstrapped?",
        "Bootstrap": "Launch",
        "Launch": "Launched?",
        "Relay": "Drained?",
        "Recover": "Bootstrapped?",
    }
    step_of = {
        "Validate": "validate",
        "Bootstrap": "bootstrap",
        "Launch": "launch",
        "Relay": "relay",
        "Recover": "recover",
    }
    for name, step in step_of.items():
        state = states[name]
        if name == "Relay":  # a callback task: the enroll function, then the shard's SendTaskSuccess
            assert state["Resource"] == "arn:aws:states:::lambda:invoke.waitForTaskToken"
            assert state["Parameters"]["FunctionName"] == arns[step]
            assert state["Parameters"]["Payload"]["task_token.$"] == "$$.Task.Token"
            assert state["HeartbeatSeconds"] == statemachine.RELAY_TASK_HEARTBEAT_SECONDS
            assert state["TimeoutSeconds"] == statemachine.EXECUTION_TIMEOUT_SECONDS  # no default task timeout
            assert state["Retry"][0]["ErrorEquals"] == ["States.Timeout"]  # its shard died: enroll again
            assert state["Next"] == order[name]
        else:
            assert (state["Type"], state["Resource"], state["Next"]) == ("Task", arns[step], order[name])
        assert any("UpstreamUnavailable" in retry["ErrorEquals"] for retry in state["Retry"])
        assert any("Lambda.ServiceException" in retry["ErrorEquals"] for retry in state["Retry"])
        assert any("Runtime.ExitError" in retry["ErrorEquals"] for retry in state["Retry"])  # a crashed invocation
    for name in ("Validate", "Bootstrap", "Launch"):
        catches = {tuple(c["ErrorEquals"]): c["Next"] for c in states[name]["Catch"]}
        rejected = {("InvalidSubmission",): "Rejected"} if name == "Validate" else {}  # a refused console/event input
        assert catches == rejected | {("JobNotActive", "DuplicateSubmission"): "Done", ("States.ALL",): "RecordFailure"}
    assert states["Rejected"]["Next"] == "Failed"
    # a team bootstrapped before (Validate passed its cached record) skips Bootstrap; any other goes through it
    assert states["Bootstrapped?"]["Choices"] == [{"Variable": "$.bootstrap", "IsPresent": True, "Next": "Launch"}]
    assert states["Bootstrapped?"]["Default"] == "Bootstrap"
    # the relay never fails a running job; throttled for good, it leaves a note first (the reconciler restarts it)
    assert [(c["ErrorEquals"], c["Next"]) for c in states["Relay"]["Catch"]] == [
        ([statemachine.THROTTLED], "RelayThrottled"),
        (["States.ALL"], "Done"),
    ]
    assert states["RelayThrottled"]["Resource"] == "arn:aws:states:::dynamodb:updateItem"
    assert states["RelayThrottled"]["Next"] == "Done"
    assert states["Drained?"]["Default"] == "Relay"
    assert states["RecordFailure"]["Resource"] == arns["record_failure"]
    assert states["RecordFailure"]["Next"] == "Failed"
    assert states["Failed"] == {"Type": "Fail", "ErrorPath": "$.Error", "CausePath": "$.Cause"}


def test_standard_with_logging_without_execution_data_and_tracing(synth: Synth) -> None:
    machine = _state_machine(synth)
    assert machine["StateMachineType"] == "STANDARD"
    logging = machine["LoggingConfiguration"]
    assert logging["Level"] == "ALL"
    assert logging["IncludeExecutionData"] is False  # task specs' envs often carry tokens
    (destination,) = logging["Destinations"]
    group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert synth.resources[group]["Properties"]["RetentionInDays"] == 90
    assert machine["TracingConfiguration"] == {"Enabled": True}


def test_the_relay_fleet_loops_its_shard_function_until_the_shard_retires(synth: Synth) -> None:
    machine = _state_machine(synth, synth.stack.fleet.state_machine)
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["StateMachineName"] == "ec2jobs-relay-fleet"  # its ARN is built from the name (no cycle)
    definition = substituted(json.loads(machine["DefinitionString"]), machine["DefinitionSubstitutions"])
    follow = {"Fn::GetAtt": [synth.function(statemachine.FLEET_HANDLER)[0], "Arn"]}
    assert definition == statemachine.fleet_definition(follow)  # type: ignore[arg-type]
    states = definition["States"]
    assert states["Follow"]["Next"] == "More?"
    assert states["More?"]["Default"] == "Follow"
    assert states["More?"]["Choices"] == [{"Variable": "$.shard.retired", "BooleanEquals": True, "Next": "Done"}]
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is False
