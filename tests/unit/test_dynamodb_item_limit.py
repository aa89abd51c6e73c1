"""DynamoDB's item size limit, as AWS documents it, and what the emulator (moto) does about it.

AWS: an item is at most 400 KB = 409,600 bytes, counting attribute names and values (strings in UTF-8 bytes,
numbers ~1 byte per two digits + 1, lists and maps 3 bytes + 1 per element)
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html,
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html).
moto 5.2.5 refuses PutItem and UpdateItem past 405,000 bytes of its own count (names + values, no list overhead;
an UpdateItem that replaces an attribute counts the old value too): stricter than AWS for every job record, so no
patch is needed. These tests fail loudly if moto stops enforcing it, and check that the spec bound
(core/spec.MAX_SPEC_BYTES) leaves a worst-case job record inside AWS's limit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from controlplane.adapters.dynamodb import DynamoJobStore
from controlplane.core.lifecycle import FailureReason, JobStatus
from controlplane.core.models import Attempt, Job
from controlplane.core.recovery import MAX_ATTEMPT_MESSAGE, RESTART_LIMIT
from controlplane.core.spec import MAX_SPEC_BYTES, TaskSpec, stored_spec_bytes
from controlplane.service.failures import MAX_MESSAGE

AWS_ITEM_LIMIT = 400 * 1024
MOTO_ITEM_LIMIT = 405_000


def _value_size(value: Any) -> int:
    """One attribute value's size by AWS's rules; `value` in the low-level format ({"S": ...}) or as boto3's
    resource layer gives it (str, Decimal, list, dict, bool, bytes)."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in {"S", "N", "B", "BOOL", "NULL", "L", "M"}:
        kind, inner = next(iter(value.items()))
        if kind == "L":
            return 3 + sum(1 + _value_size(v) for v in inner)
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in inner.items())
        if kind == "N":
            return _value_size(Decimal(inner))
        if kind in {"BOOL", "NULL"}:
            return 1
        return len(inner) if isinstance(inner, bytes) else len(str(inner).encode())
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | float | Decimal):
        digits = len(str(Decimal(value).normalize()).lstrip("-").replace(".", "").lstrip("0")) or 1
        return (digits + 1) // 2 + 1
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list | tuple):
        return 3 + sum(1 + _value_size(v) for v in value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in value.items())
    raise TypeError(f"no DynamoDB size for {type(value).__name__}")


def dynamodb_item_size(item: dict[str, Any]) -> int:
    """An item's size as AWS counts it against the 400 KB limit (attribute names + values)."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # in-process moto, not the (discarded) test endpoint
    with mock_aws():
        resource = boto3.resource("dynamodb", region_name="us-east-1")
        yield resource.create_table(
            TableName="jobs",
            KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def test_the_size_rules() -> None:
    assert dynamodb_item_size({"name": "abc"}) == 7
    assert dynamodb_item_size({"n": Decimal("12345")}) == 1 + 4
    assert dynamodb_item_size({"l": ["ab", "c"]}) == 1 + 3 + (1 + 2) + (1 + 1)
    assert dynamodb_item_size({"s": {"S": "é"}, "b": {"BOOL": True}}) == 1 + 2 + 1 + 1


def test_moto_refuses_an_oversized_put_item(table: Any) -> None:
    table.put_item(Item={"job_id": "ok", "spec": "x" * (MOTO_ITEM_LIMIT - 100)})
    with pytest.raises(ClientError) as refused:
        table.put_item(Item={"job_id": "big", "spec": "x" * MOTO_ITEM_LIMIT})
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Item size has exceeded the maximum allowed size" in refused.value.response["Error"]["Message"]


def test_moto_refuses_an_update_item_that_grows_an_item_past_the_limit(table: Any) -> None:
    """What the issue saw: a job item that fits, whose later update does not."""
    table.put_item(Item={"job_id": "j", "spec": "x" * 400_000})
    table.update_item(Key={"job_id": "j"}, UpdateExpression="SET a = :v", ExpressionAttributeValues={":v": "y" * 10})
    with pytest.raises(ClientError) as refused:
        table.update_item(
            Key={"job_id": "j"}, UpdateExpression="SET m = :v", ExpressionAttributeValues={":v": "y" * 6000}
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Item size to update has exceeded" in refused.value.response["Error"]["Message"]


def _worst_case_job(spec: TaskSpec) -> Job:
    now = dt.datetime.now(dt.UTC)
    arn = "arn:aws:states:us-east-1:123456789012:execution:ec2jobs-jobs:" + "e" * 80
    return Job(
        job_id="job-" + "j" * 60,
        team_id="t" * 32,
        provider_id="prov-" + "p" * 32,
        region="ap-southeast-3",
        name="n" * 128,
        spec=spec,
        status=JobStatus.FAILED,
        failure_reason=FailureReason.EXIT_NONZERO,
        failure_message="\U0001f600" * MAX_MESSAGE,  # 4 UTF-8 bytes per character
        exit_code=137,
        instance_id="i-0123456789abcdef0",
        instance_type="p6-b200.48xlarge",
        instance_state="shutting-down",
        hourly_price=113.9312345678,
        billed_seconds=7 * 24 * 3600,
        cost_estimate=19140.123456789,
        use_spot="auto",
        market="on-demand",
        launch_market="on-demand",
        on_demand_price=113.9312345678,
        image_id="ami-0123456789abcdef0",
        availability_zone="ap-southeast-3a",
        launch_zone="ap-southeast-3a",
        ssh_host_key="ssh-ed25519 " + "A" * 68 + " ec2jobs-host",
        instance_address="255.255.255.255",
        relay_owner=arn,
        relay_lease_until=now,
        relay_restarts=20,
        relay_restarted_at=now,
        notes=[f"note {i}: " + "n" * 2000 for i in range(30)],  # 60 KB: far more than any job gathers today
        execution_arn=arn,
        request_hash="h" * 64,
        created_at=now,
        updated_at=now,
        launched_at=now,
        deadline_at=now,
        started_at=now,
        ended_at=now,
        version=10**6,
        attempt=1 + 2 * RESTART_LIMIT,
        attempts=[_worst_attempt(n, now) for n in range(1, 1 + 2 * RESTART_LIMIT)],  # every relaunch recorded
    )


def _worst_attempt(number: int, now: dt.datetime) -> Attempt:
    return Attempt(
        attempt=number,
        instance_id="i-0123456789abcdef0",
        instance_type="p6-b200.48xlarge",
        region="ap-southeast-3",
        availability_zone="ap-southeast-3a",
        market="on-demand",
        hourly_price=113.9312345678,
        launched_at=now,
        ended_at=now,
        end_reason="SPOT_INTERRUPTED",
        exit_code=137,
        message="\U0001f600" * MAX_ATTEMPT_MESSAGE,
        billed_seconds=7 * 24 * 3600,
        cost_estimate=19140.123456789,
    )


def test_a_spec_at_the_bound_leaves_a_worst_case_job_record_inside_both_limits() -> None:
    overhead = stored_spec_bytes(TaskSpec.model_validate({"run": "x"})) - 1
    spec = TaskSpec.model_validate({"run": "x" * (MAX_SPEC_BYTES - overhead)})
    assert stored_spec_bytes(spec) == MAX_SPEC_BYTES
    item = DynamoJobStore._item(_worst_case_job(spec))
    size = dynamodb_item_size(item)
    assert size <= MOTO_ITEM_LIMIT - 20 * 1024 < AWS_ITEM_LIMIT  # the emulator accepts it too, with room
    assert size - MAX_SPEC_BYTES < 144 * 1024  # everything but the spec, at its worst (51 attempts), in 144 KiB


def test_the_old_unbounded_404_kb_spec_could_not_hold_its_later_fields() -> None:
    spec = TaskSpec.model_validate({"run": "x" * 404_000})
    assert dynamodb_item_size(DynamoJobStore._item(_worst_case_job(spec))) > AWS_ITEM_LIMIT
