"""The benchmarks' pure pieces: pricing arithmetic, DynamoDB request units, the execution-history reading."""

from __future__ import annotations

import datetime as dt

import pytest

from bench import prices
from bench.cost import workflow_of
from bench.prices import Usage


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


def test_a_relay_hour_at_the_deployed_memory_is_about_a_cent_and_a_half() -> None:
    hour = Usage(lambda_gb_seconds=prices.gb_seconds(3600, 256))
    assert prices.dollars(hour)["total"] == pytest.approx(0.015, abs=0.0002)


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
    history = [
        _event("ExecutionStarted", 0),
        _event("TaskStateEntered", 0, stateEnteredEventDetails={"name": "Validate"}),
        _event("LambdaFunctionScheduled", 0, lambdaFunctionScheduledEventDetails={"resource": arn + "validate"}),
        _event("LambdaFunctionStarted", 0.1),
        _event("LambdaFunctionSucceeded", 0.3),
        _event("TaskStateEntered", 0.3, stateEnteredEventDetails={"name": "Relay"}),
        _event("LambdaFunctionScheduled", 0.3, lambdaFunctionScheduledEventDetails={"resource": arn + "relay"}),
        _event("LambdaFunctionStarted", 0.3),
        _event("LambdaFunctionFailed", 1.3),
        _event("LambdaFunctionScheduled", 2.0, lambdaFunctionScheduledEventDetails={"resource": arn + "relay"}),
        _event("LambdaFunctionStarted", 2.0),
        _event("LambdaFunctionSucceeded", 5.0),
        _event("ChoiceStateEntered", 5.0, stateEnteredEventDetails={"name": "Drained?"}),
        _event("SucceedStateEntered", 5.0, stateEnteredEventDetails={"name": "Done"}),
    ]
    transitions, invocations, loops = workflow_of(history)
    assert transitions == 4 + 1  # four states entered, one retried attempt
    assert [handler for handler, _ in invocations] == [
        "controlplane.handlers.workflow.validate",
        "controlplane.handlers.workflow.relay",
        "controlplane.handlers.workflow.relay",
    ]
    assert [seconds for _, seconds in invocations] == pytest.approx([0.2, 1.0, 3.0])
    assert loops == 1


def test_deployed_memory_and_relay_budget_come_from_the_stack() -> None:
    deployment = prices.deployment()
    assert deployment.memory("controlplane.handlers.api.handler") == 512
    assert deployment.memory("controlplane.handlers.workflow.relay") == 256
    assert deployment.relay_budget_seconds == 600
