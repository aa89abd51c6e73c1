"""What local/ relies on in moto. If a moto upgrade moves any of it, these fail first, naming what changed
(instead of the emulator silently authorising differently)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import moto
from moto import settings
from moto.core import responses
from moto.core.authorization import ActionAuthenticatorMixin
from moto.ec2.models import amis
from moto.iam.responses import IamResponse

from local import moto_patches

REPO = Path(__file__).resolve().parents[2]


def test_moto_is_the_pinned_version() -> None:
    pinned = re.search(r"^moto\[[^\]]*\]==([\w.]+)$", (REPO / "requirements-dev.txt").read_text(), re.MULTILINE)
    assert pinned is not None
    assert moto.__version__ == pinned.group(1), "moto changed: re-check local/moto_patches.py and FACTS"


def test_iam_enforcement_switches_exist() -> None:
    """local.emulator.enable_iam_enforcement() flips these in the emulator process."""
    assert hasattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT")
    assert hasattr(ActionAuthenticatorMixin, "request_count")


def test_authorisation_resource_still_comes_from_determine_resource() -> None:
    """moto_patches replaces IamResponse._determine_resource; moto must still ask it for the resource."""
    assert "_determine_resource" in inspect.getsource(responses.BaseResponse.call_action)
    assert callable(IamResponse._determine_resource)


def test_the_patch_applies_once_and_resolves_profiles() -> None:
    moto_patches.apply()
    patched = IamResponse._determine_resource
    moto_patches.apply()
    assert IamResponse._determine_resource is patched
    assert patched.__module__ == "local.moto_patches"


def test_amis_are_loaded_from_moto_amis_path() -> None:
    """The emulator ships DLAMI + Ubuntu images through MOTO_AMIS_PATH (moto has neither)."""
    assert "MOTO_AMIS_PATH" in inspect.getsource(amis)


def test_full_object_checksum_is_moto_s_value_without_the_copies() -> None:
    """moto_patches computes a multipart upload's default full-object checksum part by part: the value must be the
    one moto's own code stores (compute_checksum of the whole object), for each type the patch takes over."""
    import os

    from moto.s3 import models
    from moto.s3.utils import compute_checksum

    assert "MultipartChecksumBuilder(" in inspect.getsource(models.FakeMultipart.complete)
    assert "bytes(self.complete_object)" in inspect.getsource(models.MultipartChecksumBuilder)  # the file, unpatched
    moto_patches.apply()
    assert models.MultipartChecksumBuilder.addPart.__module__ == "local.moto_patches"
    parts = [os.urandom(size) for size in (5 * 1024 * 1024, 1, 70_001)]
    for algorithm, kind in ((None, None), ("CRC64NVME", "FULL_OBJECT"), ("CRC32", "FULL_OBJECT"), ("CRC32", None)):
        builder = models.MultipartChecksumBuilder(algorithm, kind)
        for part in parts:
            builder.addPart(part)
        built = builder.build()
        assert built is not None
        if builder.checksum_type == "FULL_OBJECT":
            assert built == ("FULL_OBJECT", compute_checksum(b"".join(parts), builder.checksum_algorithm).decode(), 1)
        else:  # composite: moto's own code
            composite = b"".join(compute_checksum(p, "CRC32", encode_base64=False) for p in parts)
            assert built == ("COMPOSITE", compute_checksum(composite, "CRC32").decode(), 3)


def test_a_task_callback_sent_before_its_heartbeat_wait_is_armed_completes_the_task() -> None:
    """moto reads a waitForTaskToken task's callback only when its heartbeat wait wakes, and arms that wait after the
    task's Lambda returned; the patch wakes it at once when the callback came first (as AWS completes the task)."""
    import time

    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackEndpoint

    assert "heartbeat_seconds" in inspect.signature(CallbackEndpoint.setup_heartbeat_endpoint).parameters
    assert callable(CallbackEndpoint.get_outcome)
    moto_patches.apply()
    endpoint = CallbackEndpoint("token-1")
    endpoint.notify(object())  # SendTaskSuccess, while the task's Lambda is still returning
    heartbeat = endpoint.setup_heartbeat_endpoint(heartbeat_seconds=5)
    started = time.monotonic()
    assert heartbeat.clear_and_wait()  # unpatched: waits the 5 s, then times the task out
    assert time.monotonic() - started < 1
    assert endpoint.get_outcome() is not None


def test_a_table_query_reads_its_partition_only_and_answers_as_moto_does(monkeypatch: Any) -> None:
    """moto_patches makes a Query on a table (no index) read its own partition, not every item of the table: the
    answers (order, Limit, pages, both directions, a missing partition, an index query) are moto's own."""
    import boto3
    from boto3.dynamodb.conditions import Key
    from moto import mock_aws
    from moto.dynamodb.models.table import Table

    moto_patches.apply()
    assert Table.query.__module__ == "local.moto_patches"
    from moto.dynamodb.models import table as moto_table

    assert "self.all_items()" in inspect.getsource(moto_table), "moto's Table.query no longer reads all_items()"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
                {"AttributeName": "g", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-g",
                    "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        table = boto3.resource("dynamodb").Table("t")
        for pk in ("a", "b", "c"):
            for sk in (5, 1, 3, 2, 4):
                table.put_item(Item={"pk": pk, "sk": sk, "g": "even" if sk % 2 == 0 else "odd"})
        forward = table.query(KeyConditionExpression=Key("pk").eq("b"))["Items"]
        assert [(i["pk"], int(i["sk"])) for i in forward] == [("b", n) for n in (1, 2, 3, 4, 5)]
        backward = table.query(KeyConditionExpression=Key("pk").eq("b") & Key("sk").gte(2), ScanIndexForward=False)
        assert [int(i["sk"]) for i in backward["Items"]] == [5, 4, 3, 2]
        page = table.query(KeyConditionExpression=Key("pk").eq("c"), Limit=2)
        rest = table.query(KeyConditionExpression=Key("pk").eq("c"), ExclusiveStartKey=page["LastEvaluatedKey"])
        assert [int(i["sk"]) for i in page["Items"] + rest["Items"]] == [1, 2, 3, 4, 5]
        assert table.query(KeyConditionExpression=Key("pk").eq("zzz"))["Items"] == []
        evens = table.query(IndexName="by-g", KeyConditionExpression=Key("g").eq("even"))["Items"]
        assert sorted((i["pk"], int(i["sk"])) for i in evens) == [(p, n) for p in "abc" for n in (2, 4)]
        assert len(table.scan()["Items"]) == 15  # everything else still reads every item
