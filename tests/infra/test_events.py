"""EventBridge: EC2 state changes and spot interruption warnings (default bus) to the instance-events function, Job
Submission (the control plane's bus) to the workflow, ended jobs (the control plane's bus) to the reconcile function
(it admits queued jobs: docs/budgets.md), the reconciler's schedule; the patterns are
controlplane.adapters.events'."""

from __future__ import annotations

from typing import Any

from controlplane.adapters import events
from tests.infra.conftest import Synth


def _rules(synth: Synth) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in synth.of_type("AWS::Events::Rule").items()}


def _rule(synth: Synth, **match: Any) -> tuple[str, dict[str, Any]]:
    found = [(k, r) for k, r in _rules(synth).items() if all(r.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"{len(found)} rules match {match}"
    return found[0]


def _function_target(synth: Synth, rule: dict[str, Any]) -> str:
    (target,) = rule["Targets"]
    assert set(target) == {"Arn", "Id", "DeadLetterConfig", "RetryPolicy"}  # the whole event, no transformation
    return str(target["Arn"]["Fn::GetAtt"][0])


def test_five_rules(synth: Synth) -> None:
    assert len(_rules(synth)) == 5


def test_ended_jobs_on_the_custom_bus_go_to_the_reconcile_function(synth: Synth) -> None:
    _, rule = _rule(synth, EventPattern=events.JOB_ENDED_PATTERN)
    assert rule["EventPattern"] == {
        "source": ["ec2jobs"],  # the control plane's own: team roles may only put ec2jobs.team.<id>
        "detail-type": ["Job State Change"],
        "detail": {"status": ["SUCCEEDED", "FAILED", "CANCELLED"]},
    }
    assert rule["EventBusName"] == {"Ref": synth.logical_id(synth.stack.events.bus)}
    assert _function_target(synth, rule) == synth.function("controlplane.handlers.reconcile.handler")[0]


def test_ec2_state_changes_on_the_default_bus_go_to_the_instance_events_function(synth: Synth) -> None:
    _, rule = _rule(synth, EventPattern=events.EC2_STATE_PATTERN)
    assert rule["EventPattern"] == {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Instance State-change Notification"],
        "detail": {"state": ["running", "shutting-down", "terminated", "stopping", "stopped"]},
    }
    assert "EventBusName" not in rule  # the default bus, where EC2 puts them
    assert _function_target(synth, rule) == synth.function("controlplane.handlers.events.instance_state")[0]


def test_spot_interruption_warnings_go_to_the_instance_events_function(synth: Synth) -> None:
    _, rule = _rule(synth, EventPattern=events.SPOT_INTERRUPTION_PATTERN)
    assert "EventBusName" not in rule
    assert _function_target(synth, rule) == synth.function("controlplane.handlers.events.instance_state")[0]


def test_job_submissions_on_the_custom_bus_start_the_workflow_with_the_whole_event(synth: Synth) -> None:
    _, rule = _rule(synth, EventPattern=events.SUBMISSION_PATTERN)
    assert rule["EventPattern"] == {"detail-type": ["Job Submission"]}
    bus = synth.logical_id(synth.stack.events.bus)
    assert rule["EventBusName"] == {"Ref": bus}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": synth.logical_id(synth.stack.workflow.state_machine)}
    # no Input/InputPath/InputTransformer: the event id is the job id
    assert set(target) == {"Arn", "Id", "RoleArn", "DeadLetterConfig", "RetryPolicy"}
    assert synth.resources[bus]["Type"] == "AWS::Events::EventBus"


def test_the_reconciler_runs_every_minute(synth: Synth) -> None:
    from local import runtime

    _, rule = _rule(synth, ScheduleExpression="rate(1 minute)")
    assert runtime.RECONCILE_EVERY_SECONDS == 60  # the local runtime ticks at the deployed rate
    assert _function_target(synth, rule) == synth.function(runtime.RECONCILE_HANDLER)[0]


def test_eventbridge_may_invoke_each_target_function_only_from_its_rule(synth: Synth) -> None:
    permissions = [
        p["Properties"]
        for p in synth.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "events.amazonaws.com"
    ]
    rules = {k: r for k, r in _rules(synth).items() if r["Targets"][0]["Arn"].get("Fn::GetAtt")}  # to functions
    assert sorted(p["SourceArn"]["Fn::GetAtt"][0] for p in permissions) == sorted(rules)
    for permission in permissions:
        rule = rules[permission["SourceArn"]["Fn::GetAtt"][0]]
        assert permission["FunctionName"]["Fn::GetAtt"][0] == _function_target(synth, rule)


def test_every_target_dead_letters_what_it_could_not_deliver_and_an_alarm_watches(synth: Synth) -> None:
    queue = synth.logical_id(synth.stack.events.undelivered)
    for name, rule in _rules(synth).items():
        for target in rule["Targets"]:
            assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue, "Arn"]}}, name
            assert target["RetryPolicy"]["MaximumEventAgeInSeconds"] == 86400, name
    properties = synth.resources[queue]["Properties"]
    assert properties["SqsManagedSseEnabled"] is True
    assert properties["MessageRetentionPeriod"] == 14 * 86400
    (alarm,) = [r["Properties"] for r in synth.of_type("AWS::CloudWatch::Alarm").values()]
    assert (alarm["MetricName"], alarm["Threshold"]) == ("ApproximateNumberOfMessagesVisible", 0)
