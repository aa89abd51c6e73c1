"""Least privilege: each function's role grants exactly what its code calls (written out here independently of
stacks/functions.py's access table), on named resources; `*` only for actions AWS cannot scope."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from controlplane.adapters import events
from controlplane.adapters.statemachine import FLEET_HANDLER, HANDLERS
from tests.infra.conftest import Synth

READ = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query"}
WRITE = READ | {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
GET = {"secretsmanager:GetSecretValue"}
CREATE = {"secretsmanager:CreateSecret", "secretsmanager:TagResource"}  # created with tags
DELETE = {"secretsmanager:DeleteSecret"}
PROVIDER_KEYS = "secret:ec2jobs/teams/*/providers/*"
TEAM_SSH_KEY = "secret:ec2jobs/teams/*/ssh-key*"
# The artifacts bucket: listing the bucket, reading and writing objects under teams/ (no DeleteObject: lifecycle).
ARTIFACTS_RW = {("s3:ListBucket", "bucket")} | {
    (action, "bucket/teams/*")
    for action in ("s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
}
ASSUME_TRANSFER_ROLE = {("sts:AssumeRole", "transfer-role")}
# Actions without resource-level permissions in IAM: the only ones that may (and must) name "*".
UNSCOPABLE = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


@dataclass(frozen=True)
class Uses:
    tables: dict[str, set[str]]
    secrets: dict[str, set[str]] = field(default_factory=dict)
    publishes: bool = True  # its job store puts Job State Change events
    starts_workflow: bool = False
    starts_shards: bool = False  # starts relay shards' executions (the relay fleet)
    answers_tasks: bool = False  # SendTaskSuccess / Failure / Heartbeat with the job workflow's task tokens
    artifacts: frozenset[tuple[str, str]] = frozenset()  # the artifacts bucket, InstanceTransferRole


USES: dict[str, Uses] = {
    # providers (state), job submission and cancel (jobs), logs pages; provider keys stored, deleted, read to cancel;
    # presigned uploads and downloads, listings of a job's outputs
    "controlplane.handlers.api.handler": Uses(
        {"state": WRITE, "jobs": WRITE, "logs": READ},
        {PROVIDER_KEYS: GET | CREATE | DELETE},
        starts_workflow=True,
        artifacts=frozenset(ARTIFACTS_RW | ASSUME_TRANSFER_ROLE),
    ),
    "controlplane.handlers.authorizer.handler": Uses({"state": READ}, publishes=False),  # token hash → team
    # every function that records or ends a job writes its team's admission ledger (state; docs/budgets.md)
    HANDLERS["validate"]: Uses({"jobs": WRITE, "state": WRITE}),
    HANDLERS["bootstrap"]: Uses({"jobs": WRITE, "state": WRITE}, {PROVIDER_KEYS: GET, TEAM_SSH_KEY: GET | CREATE}),
    HANDLERS["launch"]: Uses({"jobs": WRITE, "state": WRITE}, {PROVIDER_KEYS: GET, TEAM_SSH_KEY: GET | CREATE}),
    # the Relay step: the job's enrolment (jobs), the fleet's shard items (state); starts a shard when all are full
    HANDLERS["relay"]: Uses({"jobs": WRITE, "state": WRITE}, starts_shards=True),
    # a relay shard: its item (state), its jobs' logs; their instances' per-job S3 credentials (InstanceTransferRole),
    # the jobs' objects; each job's outcome reported with its Relay task's token
    FLEET_HANDLER: Uses(
        {"jobs": WRITE, "state": WRITE, "logs": WRITE},
        {PROVIDER_KEYS: GET, TEAM_SSH_KEY: GET},
        artifacts=frozenset(ARTIFACTS_RW | ASSUME_TRANSFER_ROLE),
        answers_tasks=True,
    ),
    # Recover: terminates the ended attempt's instance (provider keys), reads where the next attempt's log begins
    HANDLERS["recover"]: Uses({"jobs": WRITE, "state": WRITE, "logs": READ}, {PROVIDER_KEYS: GET}),
    HANDLERS["record_failure"]: Uses({"jobs": WRITE, "state": WRITE, "logs": WRITE}, {PROVIDER_KEYS: GET}),
    # state + provider keys: DescribeInstances' StateReason (a spot reclaim whose warning was missed)
    "controlplane.handlers.events.instance_state": Uses(
        {"jobs": WRITE, "state": WRITE, "logs": WRITE}, {PROVIDER_KEYS: GET}
    ),
    # it restarts dead relay loops (a relay-only execution) and starts queued jobs' workflows once admitted
    "controlplane.handlers.reconcile.handler": Uses(
        {"jobs": WRITE, "state": WRITE, "logs": WRITE}, {PROVIDER_KEYS: GET}, starts_workflow=True
    ),
}


def expected(handler: str, uses: Uses) -> set[tuple[str, str]]:
    pairs = {(action, f"table:{table}") for table, actions in uses.tables.items() for action in actions}
    pairs |= {(action, "table:jobs/index/*") for action in uses.tables.get("jobs", set())}  # the GSIs it queries
    pairs |= {(action, secret) for secret, actions in uses.secrets.items() for action in actions}
    if uses.publishes:
        pairs.add(("events:PutEvents", "bus"))
    if uses.starts_workflow:
        pairs.add(("states:StartExecution", "state-machine"))
    if uses.starts_shards:
        pairs.add(("states:StartExecution", "relay-fleet"))
    if uses.answers_tasks:
        pairs |= {(f"states:SendTask{what}", "state-machine") for what in ("Success", "Failure", "Heartbeat")}
    pairs |= {("logs:CreateLogStream", f"log-group:{handler}"), ("logs:PutLogEvents", f"log-group:{handler}")}
    pairs |= uses.artifacts
    return pairs | {("xray:PutTraceSegments", "*"), ("xray:PutTelemetryRecords", "*")}


def _role(synth: Synth, handler: str) -> str:
    _, function = synth.function(handler)
    return str(function["Role"]["Fn::GetAtt"][0])


def test_every_function_is_accounted_for(synth: Synth) -> None:
    deployed = {p["Properties"]["Handler"] for p in synth.of_type("AWS::Lambda::Function").values()}
    assert deployed == set(USES)


@pytest.mark.parametrize("handler", sorted(USES))
def test_each_function_role_grants_exactly_what_its_code_calls(synth: Synth, handler: str) -> None:
    assert synth.permissions(_role(synth, handler)) == expected(handler, USES[handler])


def test_each_function_has_its_own_role_trusted_by_lambda_only_without_managed_policies(synth: Synth) -> None:
    roles = [_role(synth, handler) for handler in USES]
    assert len(set(roles)) == len(roles)
    for logical_id in roles:
        role = synth.resources[logical_id]["Properties"]
        (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert statement["Action"] == "sts:AssumeRole"
        assert "ManagedPolicyArns" not in role  # no AWSLambdaBasicExecutionRole: logs go to the own group only
        assert "Policies" not in role


def test_no_statement_uses_star_for_anything_that_could_be_scoped(synth: Synth) -> None:
    documents = [p["Properties"]["PolicyDocument"] for p in synth.of_type("AWS::IAM::Policy").values()]
    for role in synth.of_type("AWS::IAM::Role").values():
        documents += [p["PolicyDocument"] for p in role["Properties"].get("Policies", [])]
    assert documents
    for document in documents:
        for statement in document["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert not [a for a in actions if "*" in a], f"wildcard action in {statement}"
            if "*" in resources:
                assert set(actions) <= UNSCOPABLE, f"* for scopable actions: {sorted(set(actions) - UNSCOPABLE)}"
            assert "dynamodb:Scan" not in actions  # every read is a GetItem or a Query
            assert not [a for a in actions if a.split(":")[0] in {"ec2", "iam"}]  # providers' own keys do that


def test_the_workflow_may_invoke_exactly_its_step_functions(synth: Synth) -> None:
    role = synth.logical_id(synth.stack.workflow.state_machine.role)
    invoked = {resource for action, resource in synth.permissions(role) if action == "lambda:InvokeFunction"}
    assert invoked == {f"function:{handler}" for handler in HANDLERS.values()}
    fleet = synth.logical_id(synth.stack.fleet.state_machine.role)
    invoked = {resource for action, resource in synth.permissions(fleet) if action == "lambda:InvokeFunction"}
    assert invoked == {f"function:{FLEET_HANDLER}"}
    assert {action for action, resource in synth.permissions(fleet) if resource != "*"} == {"lambda:InvokeFunction"}
    # ... and write one thing itself: the relay-throttled note on the job (an UpdateItem on the jobs table).
    scoped = {(action, resource) for action, resource in synth.permissions(role) if resource != "*"}
    assert {action for action, _ in scoped} == {"lambda:InvokeFunction", "dynamodb:UpdateItem"}
    assert {resource for action, resource in scoped if action.startswith("dynamodb:")} == {"table:jobs"}


def test_the_submission_rule_may_start_the_workflow_and_nothing_else(synth: Synth) -> None:
    (rule,) = [
        r["Properties"]
        for r in synth.of_type("AWS::Events::Rule").values()
        if r["Properties"].get("EventPattern") == events.SUBMISSION_PATTERN
    ]
    (target,) = rule["Targets"]
    role = target["RoleArn"]["Fn::GetAtt"][0]
    assert synth.permissions(role) == {("states:StartExecution", "state-machine")}
