"""The benchmarks' pure pieces: pricing arithmetic, DynamoDB request units, the execution-history reading, and the
S3 lines of the cost model (request classes, the requests each transfer makes, a typical job priced by hand)."""

from __future__ import annotations

import datetime as dt

import pytest

from bench import prices, s3cost
from bench.cost import workflow_of
from bench.prices import Usage
from bench.s3cost import Requests, TypicalJob
from controlplane.adapters import statemachine
from controlplane.service.relay_fleet import SHARD_CAPACITY

MIB = 1024 * 1024
BUCKET = "ec2jobs-artifacts"


def test_usage_is_priced_line_by_line_at_the_list_prices() -> None:
    usage = Usage(
        lambda_requests=1_000_000,
        lambda_gb_seconds=1000,
        state_transitions=1000,
        dynamodb_write_units=1_000_000,
        dynamodb_read_units=1_000_000,
        secrets_manager_calls=10_000,
        eventbridge_events=1_000_000,
        api_requests=1_000_000,
        s3_put_requests=1000,
        s3_get_requests=1000,
        s3_gb_months=1,
    )
    lines = prices.dollars(usage)
    assert lines["lambda_requests"] == pytest.approx(0.20)
    assert lines["lambda_gb_seconds"] == pytest.approx(0.0166667)
    assert lines["state_transitions"] == pytest.approx(0.025)
    assert lines["dynamodb_write_units"] == pytest.approx(0.625)
    assert lines["dynamodb_read_units"] == pytest.approx(0.125)
    assert lines["secrets_manager_calls"] == pytest.approx(0.05)
    assert lines["eventbridge_events"] == pytest.approx(1.00)
    assert lines["api_requests"] == pytest.approx(3.50)
    assert lines["s3_put_requests"] == pytest.approx(0.005)  # PUT, COPY, POST, LIST: $0.005 per 1,000
    assert lines["s3_get_requests"] == pytest.approx(0.0004)  # GET and all other requests: $0.0004 per 1,000
    assert lines["s3_gb_months"] == pytest.approx(0.023)  # S3 Standard, first 50 TB
    assert lines["total"] == pytest.approx(sum(v for k, v in lines.items() if k != "total"))


def test_usage_adds_and_scales_every_line() -> None:
    a = Usage(lambda_requests=1, dynamodb_write_units=2)
    b = Usage(lambda_requests=3, secrets_manager_calls=4)
    total = (a + b).scaled(10)
    assert (total.lambda_requests, total.dynamodb_write_units, total.secrets_manager_calls) == (40, 20, 40)
    assert a.lambda_requests == 1  # not mutated


def test_gb_seconds_bill_whole_milliseconds_at_the_configured_memory() -> None:
    assert prices.gb_seconds(1.0, 1024) == pytest.approx(1.0)
    assert prices.gb_seconds(3600, 256) == pytest.approx(900.0)
    assert prices.gb_seconds(0.0101, 512) == pytest.approx(0.011 / 2)  # 10.1 ms → 11 ms
    assert prices.gb_seconds(-1, 256) == 0


def test_a_relay_shard_hour_shared_by_50_jobs_is_about_six_hundredths_of_a_cent_each() -> None:
    assert SHARD_CAPACITY == 50
    hour = Usage(lambda_gb_seconds=prices.gb_seconds(3600, 512) / SHARD_CAPACITY)
    assert prices.dollars(hour)["total"] == pytest.approx(0.0006, abs=0.00005)


def test_item_sizes_follow_dynamodb_rules() -> None:
    assert prices.item_size({"pk": {"S": "TEAM#a"}}) == 2 + 6
    assert prices.item_size({"n": {"N": "12345"}}) == 1 + 4  # 5 digits → 3 bytes + 1
    assert prices.item_size({"b": {"B": "AAAA"}}) == 1 + 3  # base64 in the JSON request: 3 raw bytes
    assert prices.item_size({"f": {"BOOL": True}, "z": {"NULL": True}}) == 2 + 2
    assert prices.item_size({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)
    assert prices.item_size({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}) == 1 + 3 + (2 + 1) + (2 + 1)
    with pytest.raises(ValueError, match="unknown DynamoDB type"):
        prices.item_size({"x": {"Q": "?"}})


def test_request_units_round_up_per_operation() -> None:
    assert prices.write_units(0) == 1
    assert prices.write_units(1024) == 1
    assert prices.write_units(1025) == 2
    assert prices.write_units(300 * 1024) == 300
    assert prices.write_units(100, transactional=True) == 2
    assert prices.read_units(100, consistent=True) == 1
    assert prices.read_units(100, consistent=False) == 0.5
    assert prices.read_units(4097, consistent=True) == 2


def _event(kind: str, second: float, **details: object) -> dict[str, object]:
    return {"type": kind, "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=second)} | details


def test_the_execution_history_gives_transitions_retries_and_task_durations() -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:ec2jobs-"
    callback = {"resourceType": "lambda", "resource": "invoke.waitForTaskToken"}
    history = [
        _event("ExecutionStarted", 0),
        _event("TaskStateEntered", 0, stateEnteredEventDetails={"name": "Validate"}),
        _event("LambdaFunctionScheduled", 0, lambdaFunctionScheduledEventDetails={"resource": arn + "validate"}),
        _event("LambdaFunctionStarted", 0.1),
        _event("LambdaFunctionFailed", 0.3),
        _event("LambdaFunctionScheduled", 0.5, lambdaFunctionScheduledEventDetails={"resource": arn + "validate"}),
        _event("LambdaFunctionStarted", 0.5),
        _event("LambdaFunctionSucceeded", 0.7),
        _event("TaskStateEntered", 0.7, stateEnteredEventDetails={"name": "Relay"}),
        _event("TaskScheduled", 0.7, taskScheduledEventDetails=callback),
        _event("TaskSucceeded", 25.7),
        _event("ChoiceStateEntered", 25.7, stateEnteredEventDetails={"name": "Drained?"}),
        _event("SucceedStateEntered", 25.7, stateEnteredEventDetails={"name": "Done"}),
    ]
    transitions, invocations, loops = workflow_of(history)
    assert transitions == 4 + 1  # four states entered, one retried attempt
    assert [handler for handler, _ in invocations] == [
        "controlplane.handlers.workflow.validate",
        "controlplane.handlers.workflow.validate",
        statemachine.FLEET_HANDLER,  # the relay shard's time for this job, a full shard's share of it
    ]
    assert [seconds for _, seconds in invocations] == pytest.approx([0.2, 0.2, 25.0 / SHARD_CAPACITY])
    assert loops == 1


def test_deployed_memory_and_relay_budget_come_from_the_stack() -> None:
    deployment = prices.deployment()
    assert deployment.memory("controlplane.handlers.api.handler") == 512
    assert deployment.memory(statemachine.FLEET_HANDLER) == 512
    assert deployment.relay_budget_seconds == 600


# -- S3 ---------------------------------------------------------------------------------------------------------


def test_s3_storage_is_byte_hours_in_binary_gigabytes_over_an_average_month() -> None:
    assert prices.gb_months(2**30, 730) == pytest.approx(1.0)
    assert prices.gb_months(50_000_000, 30 * 24) == pytest.approx(50_000_000 / 1_073_741_824 * 720 / 730)
    assert prices.gb_months(50_000_000, 30 * 24) == pytest.approx(0.045928, rel=1e-4)
    assert prices.gb_months(-1, 10) == 0


@pytest.mark.parametrize(
    ("method", "url", "kind"),
    [
        ("PUT", f"http://127.0.0.1:5000/{BUCKET}/teams/t/uploads/up-1/archive.tar.gz?X-Amz-Signature=x", "put"),
        ("PUT", f"http://127.0.0.1:5000/{BUCKET}/k?partNumber=2&uploadId=abc", "put"),  # UploadPart
        ("POST", f"http://127.0.0.1:5000/{BUCKET}/k?uploads", "put"),  # CreateMultipartUpload
        ("POST", f"http://127.0.0.1:5000/{BUCKET}/k?uploadId=abc", "put"),  # CompleteMultipartUpload
        ("GET", f"http://127.0.0.1:5000/{BUCKET}?list-type=2&prefix=teams%2Ft%2F", "put"),  # ListObjectsV2
        ("GET", f"http://127.0.0.1:5000/{BUCKET}/?list-type=2", "put"),
        ("GET", f"http://127.0.0.1:5000/{BUCKET}/k?uploadId=abc", "put"),  # ListParts
        ("GET", f"http://127.0.0.1:5000/{BUCKET}/teams/t/jobs/j/outputs/model.bin", "get"),
        ("HEAD", f"http://127.0.0.1:5000/{BUCKET}/teams/t/uploads/up-1/archive.tar.gz", "get"),
        ("DELETE", f"http://127.0.0.1:5000/{BUCKET}/k?uploadId=abc", None),  # AbortMultipartUpload: free
        ("POST", f"http://127.0.0.1:5000/{BUCKET}?delete", None),  # DeleteObjects: free
        ("PUT", "http://127.0.0.1:5000/another-bucket/k", None),
        ("POST", "http://127.0.0.1:5000/", None),  # DynamoDB, STS, ...
    ],
)
def test_recorded_requests_fall_into_s3_price_classes(method: str, url: str, kind: str | None) -> None:
    assert s3cost.request_class(method, url, BUCKET) == kind


def test_recorded_requests_are_counted_by_class() -> None:
    requests = [
        ("POST", f"http://h/{BUCKET}/k?uploads"),
        ("PUT", f"http://h/{BUCKET}/k?partNumber=1&uploadId=u"),
        ("POST", f"http://h/{BUCKET}/k?uploadId=u"),
        ("HEAD", f"http://h/{BUCKET}/k"),
        ("POST", "http://h/"),
    ]
    assert s3cost.count(requests, BUCKET) == Requests(put=3, get=1)


def test_each_transfer_makes_the_requests_its_code_makes() -> None:
    # the CLI through the API: one presigned PUT up to one 8 MiB part, else Create + parts + Complete; HeadObject
    assert s3cost.cli_upload(8 * MIB) == Requests(put=1, get=1)
    assert s3cost.cli_upload(8 * MIB + 1) == Requests(put=2 + 2, get=1)
    assert s3cost.cli_upload(50_000_000) == Requests(put=6 + 2, get=1)  # ceil(50e6 / 8 MiB) = 6 parts
    # the instance's tool: one PUT up to 32 MiB, else 8 MiB parts between Create and Complete; no listing
    assert s3cost.tool_upload(32 * MIB) == Requests(put=1)
    assert s3cost.tool_upload(32 * MIB + 1) == Requests(put=5 + 2)
    # its downloads: one GET up to 16 MiB (the first GET asks for that much), the rest in ranges
    assert s3cost.tool_download(16 * MIB) == Requests(get=1)
    assert s3cost.tool_download(50_000_000) == Requests(get=1 + 4)  # (50e6 - 16 MiB) in 8 MiB ranges
    # the CLI's downloads: one GET up to 16 MiB, else ranges from the start
    assert s3cost.cli_download(16 * MIB) == Requests(get=1)
    assert s3cost.cli_download(100_000_000) == Requests(get=12)  # ceil(100e6 / 8 MiB)
    assert s3cost.sync_up([800_000] * 5) == Requests(put=5)
    assert s3cost.sync_up([]) == Requests()
    # ec2jobs download: the API's listing (1,000 keys a page) and the GETs of each file
    assert s3cost.download([10] * 10) == Requests(put=1, get=10)
    assert s3cost.download([10] * 1001) == Requests(put=2, get=1001)
    assert s3cost.split(10, 3) == [4, 3, 3]


def test_a_typical_job_is_priced_by_hand() -> None:
    job = TypicalJob()  # 50 MB workdir; 5 files (4 MB) changed per 2-minute sync; 1 GB outputs in 10 files; 30 days
    assert job.syncs_per_hour == 30
    # per launch: the workdir's 8 PUT-class + 1 HEAD, the instance's 5 GETs (a first 16 MiB, then 4 ranges), the
    # last sync's 5 PUTs; the workdir and the last checkpoints stored 30 days (720 of an average month's 730 hours)
    assert s3cost.launch_requests(job) == Requests(put=13, get=6)
    launch = prices.dollars(s3cost.launch_usage(job))
    assert launch["s3_put_requests"] == pytest.approx(13 * 0.005 / 1000)
    assert launch["s3_get_requests"] == pytest.approx(6 * 0.0004 / 1000)
    assert launch["s3_gb_months"] == pytest.approx(54_000_000 / 2**30 * 720 / 730 * 0.023)
    assert launch["total"] == pytest.approx(0.0012083, rel=1e-4)
    # per job-hour: 30 syncs × 5 PUTs; 4 MB held for the hour
    assert s3cost.hour_requests(job) == Requests(put=5)
    hour = prices.dollars(s3cost.hour_usage(job))
    assert hour["s3_put_requests"] == pytest.approx(150 * 0.005 / 1000)
    assert hour["total"] == pytest.approx(0.00075 + 4_000_000 / 2**30 / 730 * 0.023)
    # outputs: 10 files of 100 MB, each 12 parts of 8 MiB (Create + 12 + Complete), one listing and 12 ranged GETs
    # a file
    assert s3cost.outputs_requests(job) == Requests(put=10 * 14 + 1, get=10 * 12)
    outputs = prices.dollars(s3cost.outputs_usage(job))
    assert outputs["s3_gb_months"] == pytest.approx(1e9 / 2**30 * 720 / 730 * 0.023)
    assert outputs["total"] == pytest.approx(0.02188, rel=1e-4)


def test_the_expiry_the_cost_model_keeps_objects_for_is_the_deployed_default() -> None:
    assert s3cost.expiry_days() == 30
