"""The emulator's per-partition write limit (local/ddb_partitions.py), against moto in this process: a hot partition
key is throttled the way DynamoDB throttles it, distinct keys are not, and what the patch hooks in moto still exists
(if a moto upgrade moves it, these fail, naming what changed)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.responses import ActionResult
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.utilities import bytesize
from moto.dynamodb.responses import DynamoHandler

from local import ddb_partitions

KB = 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    meter = ddb_partitions.install(1000.0, clock=clock)
    assert meter is not None
    try:
        with mock_aws():
            client = boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 1}))
            client.create_table(
                TableName="logs",
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "o", "KeyType": "RANGE"}],
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "o", "AttributeType": "N"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            yield boto3.resource("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 1})).Table(
                "logs"
            )
    finally:
        ddb_partitions.uninstall()


def put(table: Any, pk: str, offset: int, size: int) -> None:
    table.put_item(Item={"pk": pk, "o": offset, "data": b"x" * size})


def error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def test_a_hot_partition_key_is_throttled_like_dynamodb(table: Any) -> None:
    for offset in range(3):
        put(table, "job-a", offset, 300 * KB)  # 301 write units each: 903 of the second's 1,000
    with pytest.raises(ClientError) as refused:
        put(table, "job-a", 3, 300 * KB)
    assert error_code(refused) == "ProvisionedThroughputExceededException"
    assert refused.value.response["Error"]["Message"].startswith("Throughput exceeds")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    reasons = refused.value.response.get("ThrottlingReasons") or []
    assert [reason["reason"] for reason in reasons] == ["TableWriteKeyRangeThroughputExceeded"]
    assert "Item" not in table.get_item(Key={"pk": "job-a", "o": 3})  # refused means not written


def test_distinct_partition_keys_are_not_throttled(table: Any) -> None:
    for shard in range(20):
        for offset in range(3):
            put(table, f"job-a#{shard}", offset, 300 * KB)


def test_the_bucket_refills_at_the_partition_rate(table: Any, clock: FakeClock) -> None:
    for offset in range(3):
        put(table, "job-a", offset, 300 * KB)
    with pytest.raises(ClientError):
        put(table, "job-a", 3, 300 * KB)
    clock.now += 0.2  # 200 units back: not enough for a 301-unit item
    with pytest.raises(ClientError):
        put(table, "job-a", 3, 300 * KB)
    clock.now += 0.1
    put(table, "job-a", 3, 300 * KB)


def test_batch_write_returns_what_it_could_not_write_as_unprocessed_items(table: Any) -> None:
    requests = [{"PutRequest": {"Item": {"pk": "job-a", "o": i, "data": b"y" * (100 * KB)}}} for i in range(25)]
    response = table.meta.client.batch_write_item(RequestItems={"logs": requests})
    unprocessed = response["UnprocessedItems"]["logs"]
    assert len(unprocessed) == 16  # 9 items of 101 units fit in 1,000
    assert [int(r["PutRequest"]["Item"]["o"]) for r in unprocessed] == list(range(9, 25))
    assert bytes(unprocessed[0]["PutRequest"]["Item"]["data"].value) == b"y" * (100 * KB)  # resendable as is
    stored = table.query(KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": "job-a"})["Items"]
    assert sorted(int(item["o"]) for item in stored) == list(range(9))
    # Nothing at all can be written: the whole call is refused, as DynamoDB does.
    with pytest.raises(ClientError) as refused:
        table.meta.client.batch_write_item(RequestItems={"logs": unprocessed})
    assert error_code(refused) == "ProvisionedThroughputExceededException"


def test_deletes_and_growing_updates_cost_the_larger_item(table: Any, clock: FakeClock) -> None:
    put(table, "job-a", 0, 390 * KB)
    put(table, "job-a", 1, 390 * KB)
    clock.now += 1.0  # full bucket again
    table.delete_item(Key={"pk": "job-a", "o": 0})  # 391 units
    table.delete_item(Key={"pk": "job-a", "o": 1})  # 782
    with pytest.raises(ClientError):
        put(table, "job-a", 2, 300 * KB)  # 1,083 > 1,000
    clock.now += 1.0
    table.update_item(
        Key={"pk": "job-a", "o": 5},
        UpdateExpression="SET d = :d",
        ExpressionAttributeValues={":d": b"z" * (700 * KB // 2)},
    )  # admitted at 1 unit, then charged for the 351-unit item it created
    table.update_item(
        Key={"pk": "job-a", "o": 6},
        UpdateExpression="SET d = :d",
        ExpressionAttributeValues={":d": b"z" * (700 * KB // 2)},
    )
    with pytest.raises(ClientError):
        put(table, "job-a", 7, 300 * KB)


def test_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ddb_partitions.ENV, raising=False)
    assert ddb_partitions.rate_from_environment() == 1000.0  # on by default
    monkeypatch.setenv(ddb_partitions.ENV, "0")
    assert ddb_partitions.rate_from_environment() is None
    monkeypatch.setenv(ddb_partitions.ENV, "250")
    assert ddb_partitions.rate_from_environment() == 250.0


def test_write_units_round_up_per_kilobyte() -> None:
    assert [ddb_partitions.write_units(n) for n in (0, 1, 1024, 1025, 300 * KB)] == [1, 1, 1, 2, 300]


# -- what the patch relies on in moto ----------------------------------------------------------------------------


def test_moto_still_has_the_write_actions_the_patch_wraps() -> None:
    for action in ddb_partitions.PATCHED:
        assert callable(getattr(DynamoHandler, action, None)), f"moto's DynamoHandler has no {action} any more"


def test_moto_still_hands_actions_the_parsed_body_and_returns_action_results() -> None:
    assert "self.body" in inspect.getsource(DynamoHandler.call_action)
    batch = inspect.getsource(DynamoHandler.batch_write_item)
    assert 'self.body["RequestItems"]' in batch
    assert "UnprocessedItems" in batch
    assert "result" in dir(ActionResult)


def test_moto_item_sizes_are_attribute_names_plus_values() -> None:
    item = Item(DynamoType({"S": "a"}), None, {"pk": {"S": "a"}, "data": {"B": b"12345"}})
    assert item.size() == len("pk") + 1 + len("data") + 5
    assert bytesize("pk") == 2
    assert json.loads(json.dumps({"S": "a"})) == {"S": "a"}
