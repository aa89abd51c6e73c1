"""Job Submission events and console executions through the real workflow definition (adapters/statemachine.py)
and the real submission rule (adapters/events.py), executed by the emulator's Step Functions and EventBridge with
the real Validate and RecordFailure handlers: the team is the event's source, and a refused submission fails its
execution with Validate's own sentence and puts a Job Submission Rejected event on the bus (docs/events.md).

Bootstrap, Launch and Relay are a step that refuses (tests/integration/emulated_functions.fail): what matters here
is what Validate records and announces, not a launch."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from controlplane.adapters import events, schema, statemachine
from controlplane.core.models import Provider
from local import emulator, guard
from local.resources import ControlPlaneNames, create_tables
from tests.integration.conftest import fake_client

REGION = "us-east-1"
TASK = {"run": "echo hi", "name": "evented"}


@dataclass(frozen=True)
class Plane:
    client: Callable[[str], Any]
    names: ControlPlaneNames
    state_machine_arn: str
    bus: str
    queue_url: str


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    fake = {
        "AWS_ACCESS_KEY_ID": guard.FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": guard.FAKE_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }
    process = emulator.start(env=fake)
    try:
        endpoint = process.info.endpoint

        def client(service: str) -> Any:
            return fake_client(endpoint, service, REGION)

        yield _create(client)
    finally:
        process.stop()


def _create(client: Callable[[str], Any]) -> Plane:
    names = ControlPlaneNames(f"se{uuid.uuid4().hex[:6]}")
    create_tables(client("dynamodb"), names)
    bus = f"{names.prefix}-bus"
    env = names.environment() | {"EVENT_BUS_NAME": bus, "AWS_REGION": REGION}
    role = client("iam").create_role(RoleName=f"{names.prefix}-functions", AssumeRolePolicyDocument="{}")["Role"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "in-process")
    arns = {}
    for step, handler in statemachine.HANDLERS.items():
        if step not in {"validate", "record_failure"}:
            handler = "tests.integration.emulated_functions.fail"
        arns[step] = client("lambda").create_function(
            FunctionName=f"{names.prefix}-{step.replace('_', '-')}",
            Runtime="python3.12",
            Role=role["Arn"],
            Handler=handler,
            Code={"ZipFile": buffer.getvalue()},
            Timeout=60,
            Environment={"Variables": env},
        )["FunctionArn"]
    machine = client("stepfunctions").create_state_machine(
        name=f"{names.prefix}-jobs",
        definition=json.dumps(statemachine.definition(arns, jobs_table=names.table("jobs"))),
        roleArn=role["Arn"],
    )["stateMachineArn"]
    eventbridge, sqs = client("events"), client("sqs")
    eventbridge.create_event_bus(Name=bus)
    eventbridge.put_rule(Name="submissions", EventBusName=bus, EventPattern=json.dumps(events.SUBMISSION_PATTERN))
    eventbridge.put_targets(
        Rule="submissions", EventBusName=bus, Targets=[{"Id": "workflow", "Arn": machine, "RoleArn": role["Arn"]}]
    )
    queue_url = sqs.create_queue(QueueName=f"{names.prefix}-rejected")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rejected = {"source": [events.SOURCE], "detail-type": [events.JOB_SUBMISSION_REJECTED]}
    eventbridge.put_rule(Name="rejected", EventBusName=bus, EventPattern=json.dumps(rejected))
    eventbridge.put_targets(Rule="rejected", EventBusName=bus, Targets=[{"Id": "queue", "Arn": queue_arn}])
    return Plane(client, names, machine, bus, queue_url)


def _team(plane: Plane) -> tuple[str, str]:
    """A team with a provider record (its key is never read: the steps after Validate refuse)."""
    from controlplane.adapters.dynamodb import DynamoProviderStore

    team_id, provider_id = f"t-{uuid.uuid4().hex[:10]}", f"prov-{uuid.uuid4().hex[:12]}"
    table = boto3.resource(
        "dynamodb",
        endpoint_url=plane.client("sts").meta.endpoint_url,
        region_name=REGION,
        aws_access_key_id=guard.FAKE_ACCESS_KEY_ID,
        aws_secret_access_key=guard.FAKE_SECRET_ACCESS_KEY,
    ).Table(plane.names.table("state"))
    DynamoProviderStore(table).create(
        Provider(
            provider_id=provider_id,
            team_id=team_id,
            name="main",
            region=REGION,
            account_id="123456789012",
            user_arn="arn:aws:iam::123456789012:user/p",
            access_key_hint="AKIA…TEST",
            secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:none",
            created_at=dt.datetime.now(dt.UTC),
        )
    )
    return team_id, provider_id


def _put(plane: Plane, source: str, detail: dict[str, Any]) -> None:
    entry = {"Source": source, "DetailType": "Job Submission", "Detail": json.dumps(detail), "EventBusName": plane.bus}
    assert plane.client("events").put_events(Entries=[entry])["FailedEntryCount"] == 0


def _jobs(plane: Plane, team_id: str) -> list[dict[str, Any]]:
    items = plane.client("dynamodb").query(
        TableName=plane.names.table("jobs"),
        IndexName=schema.JOBS_BY_TEAM,
        KeyConditionExpression="team_id = :t",
        ExpressionAttributeValues={":t": {"S": team_id}},
    )["Items"]
    return [{k: next(iter(v.values())) for k, v in item.items()} for item in items]


def _rejections(plane: Plane, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        messages = plane.client("sqs").receive_message(
            QueueUrl=plane.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        found += [json.loads(m["Body"]) for m in messages.get("Messages", [])]
    return found


def _ended(plane: Plane, execution_arn: str, timeout: float = 60) -> dict[str, Any]:
    sfn = plane.client("stepfunctions")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = dict(sfn.describe_execution(executionArn=execution_arn))
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.2)
    raise AssertionError("the execution did not end")


def _wait_for(condition: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the condition was not met in time")


def test_a_non_object_console_input_fails_with_validates_sentence_and_is_announced(plane: Plane) -> None:
    from controlplane.service.intake import NOT_AN_OBJECT

    sfn = plane.client("stepfunctions")
    execution = sfn.start_execution(stateMachineArn=plane.state_machine_arn, name=f"c-{uuid.uuid4().hex}", input="[]")

    ended = _ended(plane, execution["executionArn"])

    assert (ended["status"], ended.get("error"), ended.get("cause")) == ("FAILED", "InvalidSubmission", NOT_AN_OBJECT)
    (rejected,) = [e for e in _rejections(plane, 1) if e["detail"]["execution_arn"] == execution["executionArn"]]
    assert (rejected["detail"]["reason"], rejected["detail"]["submission"]) == (NOT_AN_OBJECT, "console")


def test_a_forged_event_runs_nothing_for_the_named_team_and_its_sender_learns_why(plane: Plane) -> None:
    sender, _ = _team(plane)
    victim, victim_provider = _team(plane)
    detail = TASK | {"team_id": victim, "provider_id": victim_provider, "envs": {"TOKEN": "never-on-the-bus"}}

    _put(plane, f"ec2jobs.team.{sender}", detail)

    (rejected,) = _rejections(plane, 1)
    assert rejected["detail"]["team_id"] == sender
    assert victim in rejected["detail"]["reason"]
    assert "never-on-the-bus" not in json.dumps(rejected)
    (failed,) = _wait_for(lambda: _jobs(plane, sender))
    assert (failed["job_id"], failed["status"], failed["source"]) == (rejected["detail"]["job_id"], "FAILED", "event")
    assert failed["failure_message"] == rejected["detail"]["reason"]
    assert _jobs(plane, victim) == []


def test_an_event_from_a_teams_source_records_the_job_in_that_team(plane: Plane) -> None:
    team, provider = _team(plane)

    _put(plane, f"ec2jobs.team.{team}", TASK | {"provider_id": provider})

    (job,) = _wait_for(lambda: _jobs(plane, team))
    assert (job["source"], job["provider_id"], job["name"]) == ("event", provider, "evented")
