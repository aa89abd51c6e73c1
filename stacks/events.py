"""Events: the control plane's custom bus (Job State Change out, Job Submission in), the rules with the event
patterns from controlplane.adapters.events (the local runtime creates its rules from the same ones), and the
reconciler's schedule. An event EventBridge could not deliver after its retries (24 h) lands in a dead-letter queue
with an alarm, instead of vanishing (the reconciler repairs what a lost EC2 event would have done; a lost Job
Submission would otherwise be a job never created)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from controlplane.adapters import events as patterns
from stacks import nag

RECONCILE_EVERY = Duration.minutes(1)  # local/runtime.py ticks at the same rate
_PATTERN_FIELDS = {
    "source": "source",
    "detail-type": "detail_type",
    "detail": "detail",
    "account": "account",
    "region": "region",
    "resources": "resources",
    "id": "id",
    "time": "time",
    "version": "version",
}


def event_pattern(pattern: Mapping[str, Any]) -> events.EventPattern:
    """An EventBridge pattern as written in the JSON (e.g. adapters.events) → CDK's EventPattern."""
    unknown = set(pattern) - set(_PATTERN_FIELDS)
    if unknown:
        raise ValueError(f"event pattern fields CDK cannot express: {sorted(unknown)}")
    return events.EventPattern(**{_PATTERN_FIELDS[key]: value for key, value in pattern.items()})


class Events(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        publishers: Sequence[lambda_.Function],
        instance_events: lambda_.IFunction,
        reconcile: lambda_.IFunction,
        workflow: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        self.undelivered = sqs.Queue(
            self,
            "UndeliveredEvents",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        nag.acknowledge(
            self.undelivered,
            "AwsSolutions-SQS3",
            "This queue is the dead-letter queue of the EventBridge targets (rule targets' DeadLetterConfig, which "
            "cdk-nag does not see as DLQ use); a DLQ of a DLQ would only move the same messages again.",
        )
        self.undelivered_alarm = cloudwatch.Alarm(
            self,
            "UndeliveredEventsAlarm",
            alarm_description="EventBridge could not deliver an ec2jobs event to its target (see the queue)",
            metric=self.undelivered.metric_approximate_number_of_messages_visible(period=Duration.minutes(5)),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        delivery: dict[str, Any] = {"dead_letter_queue": self.undelivered, "max_event_age": Duration.hours(24)}
        self.bus = events.EventBus(self, "Bus", description="ec2jobs: Job State Change events out, Job Submission in")
        for function in publishers:  # their job stores put Job State Change events (EVENT_BUS_NAME unset: none)
            function.add_environment("EVENT_BUS_NAME", self.bus.event_bus_name)
            self.bus.grant_put_events_to(function)
        # EC2's events arrive on the default bus of the account that owns the instances.
        self.instance_states = events.Rule(
            self,
            "InstanceStateChanges",
            description="EC2 instance state changes to the ec2jobs instance-events function",
            event_pattern=event_pattern(patterns.EC2_STATE_PATTERN),
            targets=[targets.LambdaFunction(instance_events, **delivery)],
        )
        self.spot_interruptions = events.Rule(
            self,
            "SpotInterruptions",
            description="EC2 spot interruption warnings to the ec2jobs instance-events function",
            event_pattern=event_pattern(patterns.SPOT_INTERRUPTION_PATTERN),
            targets=[targets.LambdaFunction(instance_events, **delivery)],
        )
        self.reconcile_schedule = events.Rule(
            self,
            "ReconcileSchedule",
            description="Runs the ec2jobs reconciler every minute",
            schedule=events.Schedule.rate(RECONCILE_EVERY),
            targets=[targets.LambdaFunction(reconcile, **delivery)],
        )
        # A job ended: the reconcile function admits what now fits in its team's queue (docs/budgets.md); the
        # Lambda that ended it may not start workflows. The reconciler's sweep is the backstop.
        self.jobs_ended = events.Rule(
            self,
            "JobsEnded",
            description="ended jobs (Job State Change) to the ec2jobs reconcile function: admits queued jobs",
            event_bus=self.bus,
            event_pattern=event_pattern(patterns.JOB_ENDED_PATTERN),
            targets=[targets.LambdaFunction(reconcile, **delivery)],
        )
        # A submission starts the workflow with the whole event: Validate takes the team from its `source`
        # (ec2jobs.team.<team_id>, bound to each team's role by an events:source IAM condition) and the job id from the
        # team and its idempotency key or event id. Every source matches, so a wrong one is answered by a Job
        # Submission Rejected event rather than dropped unseen (docs/events.md).
        self.submissions = events.Rule(
            self,
            "JobSubmissions",
            description="Job Submission events on the ec2jobs bus start the job workflow",
            event_bus=self.bus,
            event_pattern=event_pattern(patterns.SUBMISSION_PATTERN),
            targets=[targets.SfnStateMachine(workflow, **delivery)],
        )
