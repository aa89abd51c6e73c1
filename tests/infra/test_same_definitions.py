"""The local runtime (local/runtime.py) and the stack build the control plane from the same definitions: the
state machine, the event patterns, the handlers and the table shapes. The local runtime's create_resources runs
here against a recording fake of boto3 (no emulator), and what it would create is compared with the template."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from controlplane.adapters import events, statemachine
from controlplane.handlers import api as api_handler
from local import runtime
from local.resources import ControlPlaneNames
from stacks import api as api_stack
from stacks import functions as functions_stack
from stacks import workflow as workflow_stack
from tests.infra.conftest import Synth
from tests.infra.test_workflow import substituted

ACCOUNT = "123456789012"


@dataclass
class Recorder:
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def client(self, service: str, *args: Any, **kwargs: Any) -> Any:
        recorder = self

        class Client:
            def __getattr__(self, operation: str) -> Any:
                def call(**request: Any) -> dict[str, Any]:
                    recorder.calls.append((service, operation, request))
                    return recorder.response(operation, request)

                return call

        return Client()

    @staticmethod
    def response(operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "list_tables":
            return {"TableNames": []}
        if operation == "create_role":
            return {"Role": {"Arn": f"arn:aws:iam::{ACCOUNT}:role/{request['RoleName']}"}}
        if operation == "create_function":
            return {"FunctionArn": f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{request['FunctionName']}"}
        if operation == "create_state_machine":
            return {"stateMachineArn": f"arn:aws:states:us-east-1:{ACCOUNT}:stateMachine:{request['name']}"}
        return {}

    def requests(self, operation: str) -> list[dict[str, Any]]:
        return [request for _, op, request in self.calls if op == operation]


@pytest.fixture(scope="module")
def local_plane() -> Recorder:
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(boto3, "client", recorder.client)
        runtime.create_resources(ControlPlaneNames("ec2jobs"), "http://127.0.0.1:9")
    return recorder


def test_the_stack_imports_the_very_definitions_the_local_runtime_uses() -> None:
    assert workflow_stack.statemachine is statemachine
    assert api_stack.PUBLIC_ROUTES is api_handler.PUBLIC_ROUTES  # the local API front gets api.PUBLIC_ROUTES too
    assert functions_stack.statemachine.HANDLERS is statemachine.HANDLERS
    assert functions_stack.INSTANCE_EVENTS_HANDLER == runtime.INSTANCE_EVENTS_HANDLER
    assert functions_stack.RECONCILE_HANDLER == runtime.RECONCILE_HANDLER


def test_the_same_functions(synth: Synth, local_plane: Recorder) -> None:
    local = {request["Handler"] for request in local_plane.requests("create_function")}
    deployed = {p["Properties"]["Handler"] for p in synth.of_type("AWS::Lambda::Function").values()}
    # The API and the authorizer run in the local API front (local/apigw.py), not as emulated functions.
    assert local == deployed - {"controlplane.handlers.api.handler", "controlplane.handlers.authorizer.handler"}
    for request in local_plane.requests("create_function"):
        _, function = synth.function(request["Handler"])
        assert request["Timeout"] == function["Timeout"] or request["Handler"] not in statemachine.HANDLERS.values()


def test_the_same_state_machine_definition(synth: Synth, local_plane: Recorder) -> None:
    created, fleet = local_plane.requests("create_state_machine")
    local_definition = json.loads(created["definition"])
    arn_of = {
        request["Handler"]: f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{request['FunctionName']}"
        for request in local_plane.requests("create_function")
    }
    machine = synth.resources[synth.logical_id(synth.stack.workflow.state_machine)]
    local_jobs = ControlPlaneNames("ec2jobs").table("jobs")
    with_local_arns = {
        workflow_stack.substitution_key(step): arn_of[handler] for step, handler in statemachine.HANDLERS.items()
    } | {workflow_stack.JOBS_TABLE_KEY: local_jobs}
    deployed = substituted(json.loads(machine["Properties"]["DefinitionString"]), with_local_arns)
    assert (
        deployed
        == local_definition
        == statemachine.definition(
            {step: arn_of[handler] for step, handler in statemachine.HANDLERS.items()}, jobs_table=local_jobs
        )
    )
    # the relay fleet's, with the shard function
    deployed_fleet = synth.resources[synth.logical_id(synth.stack.fleet.state_machine)]["Properties"]
    with_local_arn = {"follow_arn": arn_of[statemachine.FLEET_HANDLER]}
    assert (
        substituted(json.loads(deployed_fleet["DefinitionString"]), with_local_arn)
        == json.loads(fleet["definition"])
        == statemachine.fleet_definition(arn_of[statemachine.FLEET_HANDLER])
    )


def test_the_same_event_patterns_to_the_same_targets(synth: Synth, local_plane: Recorder) -> None:
    local_rules = {r["Name"]: json.loads(r["EventPattern"]) for r in local_plane.requests("put_rule")}
    local_targets = {t["Rule"]: t["Targets"][0]["Arn"] for t in local_plane.requests("put_targets")}
    handler_of = {
        f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{r['FunctionName']}": r["Handler"]
        for r in local_plane.requests("create_function")
    }
    local = {
        json.dumps(pattern, sort_keys=True): handler_of.get(local_targets[name], "state-machine")
        for name, pattern in local_rules.items()
    }
    deployed = {}
    for rule in synth.of_type("AWS::Events::Rule").values():
        properties = rule["Properties"]
        if "EventPattern" not in properties:
            continue  # the reconciler's schedule (local: a thread at the same rate)
        target = properties["Targets"][0]["Arn"]
        label = synth.label(target.get("Ref") or target["Fn::GetAtt"][0]).removeprefix("function:")
        deployed[json.dumps(properties["EventPattern"], sort_keys=True)] = label
    assert deployed == local
    assert set(local) == {
        json.dumps(pattern, sort_keys=True)
        for pattern in (
            events.SUBMISSION_PATTERN,
            events.EC2_STATE_PATTERN,
            events.SPOT_INTERRUPTION_PATTERN,
            events.JOB_ENDED_PATTERN,
        )
    }


def test_the_same_tables(synth: Synth, local_plane: Recorder) -> None:
    local = {request["TableName"].removeprefix("ec2jobs-"): request for request in local_plane.requests("create_table")}
    assert set(local) == set(synth.stack.storage.tables)
    for name, table in synth.stack.storage.tables.items():
        deployed = synth.resources[synth.logical_id(table)]["Properties"]
        for key in ("KeySchema", "BillingMode"):
            assert deployed[key] == local[name][key]
        assert sorted(deployed["AttributeDefinitions"], key=str) == sorted(local[name]["AttributeDefinitions"], key=str)
        assert deployed.get("GlobalSecondaryIndexes") == local[name].get("GlobalSecondaryIndexes")
    local_ttl = {
        request["TableName"].removeprefix("ec2jobs-"): request["TimeToLiveSpecification"]
        for request in local_plane.requests("update_time_to_live")
    }
    deployed_ttl = {
        name: synth.resources[synth.logical_id(table)]["Properties"]["TimeToLiveSpecification"]
        for name, table in synth.stack.storage.tables.items()
        if "TimeToLiveSpecification" in synth.resources[synth.logical_id(table)]["Properties"]
    }
    assert (
        local_ttl
        == deployed_ttl
        == {
            "logs": {"AttributeName": "expires_at", "Enabled": True},
            "state": {"AttributeName": "ttl", "Enabled": True},
        }
    )
