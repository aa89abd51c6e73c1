"""The fault plan (local/faults.py) that drives the e2e fault matrix: rules match what they name, fire the number
of times they say, and answer in each service's protocol."""

from __future__ import annotations

import json
from pathlib import Path

from local.faults import FaultPlan, Faults, RuntimeExit, error_response, lambda_job, request_facts


def test_a_rule_fires_after_skip_every_nth_match_at_most_times(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    rule = plan.add("crash_after", service="dynamodb", job="job-1", skip=1, every=2, times=2)
    faults = Faults(plan.path)

    fired = [faults.take("crash_after", service="dynamodb", body='{"job_id": "job-1"}') is not None for _ in range(8)]

    assert fired == [False, False, True, False, True, False, False, False]
    assert len(plan.fired(rule)) == 2
    assert faults.take("crash_after", service="dynamodb", body='{"job_id": "job-2"}') is None  # another job


def test_rules_match_only_what_they_name(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    plan.add("aws_error", service="ec2", operation="RunInstances", zone=["us-east-1a", "us-east-1b"], job="j")
    faults = Faults(plan.path)
    base = {"service": "ec2", "operation": "RunInstances", "jobs": ["j"]}

    assert faults.take("aws_error", **base, zone="us-east-1b") is not None
    assert faults.take("aws_error", **base, zone=None) is not None  # AWS's choice: the rule's first zone
    assert faults.take("aws_error", **base, zone="us-east-1c") is None
    assert faults.take("aws_error", **(base | {"operation": "TerminateInstances"}), zone="us-east-1a") is None
    assert faults.take("aws_error", **(base | {"jobs": ["other"]}), zone="us-east-1a") is None
    assert faults.take("ssh_drop", job="j", bytes=10) is None  # another kind


def test_a_rule_naming_a_region_matches_only_requests_signed_for_it(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    rule = plan.add("aws_error", service="ec2", operation="RunInstances", region="us-east-1", times=2)
    faults = Faults(plan.path)
    base = {"service": "ec2", "operation": "RunInstances", "zone": None}

    assert faults.take("aws_error", **base, region="us-west-2") is None  # capacity elsewhere
    assert faults.take("aws_error", **base, region="us-east-1") is not None
    assert faults.take("aws_error", **(base | {"zone": "us-east-1c"}), region="us-east-1") is not None
    assert faults.take("aws_error", **base, region="us-east-1") is None  # fired its `times`: capacity is back
    assert [firing["region"] for firing in plan.fired(rule)] == ["us-east-1", "us-east-1"]


def test_a_removed_rule_stops_firing(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    rule = plan.add("aws_error", service="ec2", operation="RunInstances", region=["us-east-1", "us-west-2"])
    kept = plan.add("aws_error", service="ec2", operation="TerminateInstances")
    faults = Faults(plan.path)
    run = {"service": "ec2", "operation": "RunInstances", "region": "us-west-2"}
    assert faults.take("aws_error", **run) is not None

    plan.remove(rule)

    assert faults.take("aws_error", **run) is None
    assert faults.take("aws_error", service="ec2", operation="TerminateInstances") is not None
    assert [r["id"] for r in plan.rules] == [kept]
    assert len(plan.fired(rule)) == 1  # what fired before stays recorded


def test_an_ssh_drop_waits_for_its_byte_count(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    plan.add("ssh_drop", job="j", bytes=1000, times=1)
    faults = Faults(plan.path)

    assert faults.take("ssh_drop", job="j", bytes=999) is None
    assert faults.take("ssh_drop", job="j", bytes=1000) is not None
    assert faults.take("ssh_drop", job="j", bytes=5000) is None  # fired its one time


def test_the_plan_is_reread_when_the_test_changes_it(tmp_path: Path) -> None:
    plan = FaultPlan(tmp_path / "plan.json")
    faults = Faults(plan.path)
    assert not faults.down()

    plan.set_down(True)

    assert faults.down()


def test_errors_are_answered_in_each_services_protocol() -> None:
    rule = {"id": "r", "code": "ProvisionedThroughputExceededException", "status": 400}
    status, content_type, body = error_response("dynamodb", rule, {"body": '{"TableName": "jobs"}'})
    assert (status, content_type) == (400, "application/x-amz-json-1.0")
    assert json.loads(body)["__type"] == "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"

    ice = {"id": "r", "code": "InsufficientInstanceCapacity", "status": 500, "zone": ["us-east-1a"]}
    status, content_type, body = error_response("ec2", ice, {"body": "Action=RunInstances", "region": "us-east-1"})
    assert (status, content_type) == (500, "text/xml")
    assert b"<Code>InsufficientInstanceCapacity</Code>" in body
    assert b"(us-east-1a)" in body  # the zone AWS names, as EC2's message does
    assert b"us-east-1b" in body  # and where to try instead

    anywhere = {"id": "r", "code": "InsufficientInstanceCapacity", "region": "us-west-2"}
    _, _, body = error_response("ec2", anywhere, {"body": "Action=RunInstances", "region": "us-west-2"})
    assert b"(us-west-2a)" in body  # AWS's choice in the request's own region
    assert b"us-east-1" not in body


def test_request_facts_read_service_operation_and_key() -> None:
    environ = {
        "HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261124/us-east-1/dynamodb/aws4_request, ...",
        "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.BatchWriteItem",
    }
    facts = request_facts(environ, b'{"RequestItems": {}}')
    assert (facts["service"], facts["operation"], facts["access_key"]) == ("dynamodb", "BatchWriteItem", "AKIAEXAMPLE")
    assert facts["region"] == "us-east-1"  # the region the request is signed for: what `region` rules match


def test_the_job_of_an_invocation_and_the_crash_name() -> None:
    assert lambda_job({"job_id": "job-1", "relay_owner": "x"}) == "job-1"
    assert lambda_job({"input": {"job_id": "job-2"}, "execution_name": "n"}) == "job-2"
    assert lambda_job({"detail": {}}) is None
    assert RuntimeExit.__name__ == "Runtime.ExitError"  # what Step Functions reports for a dead Lambda runtime


def test_a_rule_added_within_the_same_clock_tick_is_seen(tmp_path: Path) -> None:
    """The plan's mtime advances at the kernel's clock tick: two writes a few ms apart can share it (a rule the
    emulator then never loaded made the fault matrix flaky). The emulator tells writes apart by the file's inode."""
    import os

    plan = FaultPlan(tmp_path / "plan.json")
    first = plan.add("crash_after", service="dynamodb", job="job-1")
    faults = Faults(plan.path)
    assert faults.take("crash_after", service="dynamodb", body="job-1") is not None  # loaded, with its first rule
    moment = plan.path.stat().st_mtime_ns
    second = plan.add("crash_after", service="dynamodb", job="job-2")
    os.utime(plan.path, ns=(moment, moment))  # the same tick as the first write
    assert faults.take("crash_after", service="dynamodb", body="job-2") is not None
    assert [r["rule"] for r in plan.fired()] == [first, second]


def test_rules_added_from_many_threads_are_all_kept(tmp_path: Path) -> None:
    import threading

    plan = FaultPlan(tmp_path / "plan.json")
    threads = [threading.Thread(target=plan.add, args=("ssh_drop",), kwargs={"job": f"j{n}"}) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads(plan.path.read_text())["rules"]) == 20
