"""The job workflow's state machine (Amazon States Language): the single definition the CDK stack deploys and the
local runtime runs, given the ARNs of the step Lambdas.

Validate → Bootstrap → Launch → Relay ⟲ (until `relay.finished`) → Done. Validate passes the team's cached bootstrap
record when its resources in the job's account and region were bootstrapped before, and the `Bootstrapped?` choice
then goes straight to Launch (which re-bootstraps if RunInstances says one is gone). Relay is a callback task: it
enrolls the job on a relay shard (the relay fleet, `fleet_definition`, docs/relay-fleet.md) and waits, holding no
Lambda, for the shard's SendTaskSuccess with the relay's outcome. An execution whose input carries `resume_relay`
(the reconciler starts one when a job's relay loop died) goes straight to Relay; one with `resume_launch` (a job
waiting for capacity whose execution died) to Bootstrap. Managed recovery (core/recovery.py): a relay loop that ends
with `relay.recover` (the attempt ended and the job relaunches) goes to Recover, which terminates the attempt's
instance and begins the next attempt, then (Bootstrap →) Launch → Relay again: like Validate, Recover passes the
cached bootstrap record of the next attempt's region when there is one. Launch may answer `launch.next`:
`bootstrap` (no capacity in this region: the next region of the job's list needs its resources) or `wait` (no
capacity anywhere: WAITING_CAPACITY, a Wait state of `launch.wait_seconds`, then Launch
again — waiting holds no Lambda). Transient errors
(`UpstreamUnavailable`, Lambda service hiccups) and crashed invocations (killed runtime, timeout) are retried with
backoff: every step is idempotent (Launch's ClientToken, the relay's committed offset and lease). `JobNotActive` /
`DuplicateSubmission` end quietly (the job already ended, or another execution owns it); anything else goes to
RecordFailure, which makes sure the job ends FAILED with no instance left running, and the execution fails with the
job's failure reason as Error and its failure message as Cause. Validate's `InvalidSubmission` (an input that names
no usable team, provider or job, or is not even a JSON object, e.g. `[]`) goes to Rejected with the error alone as
state (a result path into a non-object input would be a States.Runtime error), so the execution fails with
Validate's own sentence; Validate has already recorded and announced the rejection (docs/events.md). The relay never
fails a running job: if it keeps failing, the execution ends and the instance's own end (instance events,
reconciler) settles the job. Lambda throttling (`Lambda.TooManyRequestsException`: the account's concurrency is used
up) is retried apart, with long jittered backoff. A relay still throttled after that records a note on the job
straight from Step Functions (a DynamoDB UpdateItem, no Lambda needed) and ends the loop; the reconciler then starts
a new relay loop, so the job is never lost (docs/limits.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.core.lifecycle import JobStatus

# Step name → the Lambda handler (module.function inside the single asset).
HANDLERS: dict[str, str] = {
    "validate": "controlplane.handlers.workflow.validate",
    "bootstrap": "controlplane.handlers.workflow.bootstrap",
    "launch": "controlplane.handlers.workflow.launch",
    "relay": "controlplane.handlers.relay_shard.enroll",
    "recover": "controlplane.handlers.workflow.recover",
    "record_failure": "controlplane.handlers.workflow.record_failure",
}
# The relay fleet's function (fleet_definition): one relay shard's invocation.
FLEET_HANDLER = "controlplane.handlers.relay_shard.follow"
# Timeouts (seconds) the deployed functions need: launch may wait up to 60 s for IAM propagation; a relay shard's
# invocation follows its jobs until 20 s before this (each job's loop for at most RELAY_BUDGET_SECONDS at a time).
TIMEOUTS: dict[str, int] = {
    "validate": 30,
    "bootstrap": 120,
    "launch": 180,
    "relay": 30,
    "relay_shard": 900,
    "recover": 60,
    "record_failure": 60,
}

# The execution's own deadline: Step Functions' maximum for a Standard workflow, one year
# (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html): a job with job_recovery may make many
# attempts of up to 7 days each, and wait for capacity between them. Past it Step Functions ends the execution; the
# reconciler settles the job.
EXECUTION_TIMEOUT_SECONDS = 365 * 24 * 3600
# A shard heartbeats each of its jobs' Relay tasks every 30 s (service/relay_fleet.py HEARTBEAT_SECONDS); a task not
# heartbeaten this long (its shard died) times out and enrolls the job on another shard.
RELAY_TASK_HEARTBEAT_SECONDS = 120

# Where the CDK stack substitutes the jobs table's name (stacks/workflow.py); the local runtime passes the name.
JOBS_TABLE_PLACEHOLDER = "${jobs_table}"

_LAMBDA_TRANSIENT = ["Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.SdkClientException"]
THROTTLED = "Lambda.TooManyRequestsException"
# Lambda refused the invocation for want of concurrency. Waiting does not hold a Lambda, so wait long, with full
# jitter (a random delay up to the backoff: throttled executions do not all come back at once). Launch steps give up
# after at most 8.6 minutes each (the reconciler fails a job not launched within 15); the relay after 30.
LAUNCH_THROTTLE_RETRY: dict[str, Any] = {
    "ErrorEquals": [THROTTLED],
    "IntervalSeconds": 5,
    "BackoffRate": 2,
    "MaxDelaySeconds": 120,
    "MaxAttempts": 8,
    "JitterStrategy": "FULL",
}
RELAY_THROTTLE_RETRY: dict[str, Any] = LAUNCH_THROTTLE_RETRY | {
    "IntervalSeconds": 10,
    "MaxDelaySeconds": 300,
    "MaxAttempts": 10,
}
RELAY_THROTTLED_NOTE = (
    "Lambda throttled this job's log relay for about half an hour (the account's Lambda concurrency was used up); "
    "the reconciler starts a new relay loop, which resumes the output where it stopped. Raise the account's Lambda "
    "concurrency quota or run fewer jobs at once (see docs/limits.md)."
)
_DYNAMODB_TRANSIENT = [
    "DynamoDB.ProvisionedThroughputExceededException",
    "DynamoDB.ThrottlingException",
    "DynamoDB.RequestLimitExceeded",
    "DynamoDB.InternalServerErrorException",
]
# An invocation that died: its runtime exited (out of memory, killed), it timed out, or Lambda lost it.
_CRASHED = ["Runtime.ExitError", "Lambda.Unknown", "Sandbox.Timedout", "States.Timeout"]
_QUIET_END = ["JobNotActive", "DuplicateSubmission"]


def _retry_transient(
    interval: int, attempts: int, throttle: dict[str, Any] = LAUNCH_THROTTLE_RETRY
) -> list[dict[str, Any]]:
    upstream = {"ErrorEquals": ["UpstreamUnavailable"], "IntervalSeconds": interval, "MaxAttempts": attempts}
    service = {"ErrorEquals": _LAMBDA_TRANSIENT, "IntervalSeconds": 2}
    crashed = {"ErrorEquals": _CRASHED, "IntervalSeconds": 2, "MaxAttempts": 2, "BackoffRate": 2}
    return [dict(throttle), upstream | {"BackoffRate": 2}, service | {"MaxAttempts": 6, "BackoffRate": 2}, crashed]


def _note_relay_throttled(jobs_table: str) -> dict[str, Any]:
    """Record RELAY_THROTTLED_NOTE on a live job, once (an optimised DynamoDB integration: no Lambda to throttle)."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::dynamodb:updateItem",
        "Parameters": {
            "TableName": jobs_table,
            "Key": {"job_id": {"S.$": "$.job_id"}},
            "UpdateExpression": "SET notes = list_append(if_not_exists(notes, :none), :note)",
            "ConditionExpression": "attribute_exists(job_id) AND #status IN (:provisioning, :running) "
            "AND NOT contains(notes, :text)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":none": {"L": []},
                ":note": {"L": [{"S": RELAY_THROTTLED_NOTE}]},
                ":text": {"S": RELAY_THROTTLED_NOTE},
                ":provisioning": {"S": str(JobStatus.PROVISIONING)},
                ":running": {"S": str(JobStatus.RUNNING)},
            },
        },
        "ResultPath": None,
        "Retry": [{"ErrorEquals": _DYNAMODB_TRANSIENT, "IntervalSeconds": 2, "MaxAttempts": 5, "BackoffRate": 2}],
        # Already noted, or the job ended meanwhile (ConditionalCheckFailed): nothing to add.
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.note_error", "Next": "Done"}],
        "Next": "Done",
    }


def _catch(failure_state: str = "RecordFailure") -> list[dict[str, Any]]:
    return [
        {"ErrorEquals": _QUIET_END, "ResultPath": "$.stopped", "Next": "Done"},
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failure_state},
    ]


# Validate's refusal of an input: the state becomes the error itself ({"Error", "Cause"}), whatever the input was.
_REJECTED = {"ErrorEquals": ["InvalidSubmission"], "ResultPath": "$", "Next": "Rejected"}


def definition(
    functions: Mapping[str, str],
    jobs_table: str = JOBS_TABLE_PLACEHOLDER,
    relay_heartbeat_seconds: int = RELAY_TASK_HEARTBEAT_SECONDS,
) -> dict[str, Any]:
    """The state machine for these Lambda ARNs (keys: HANDLERS' step names) and jobs table (its name)."""
    missing = set(HANDLERS) - set(functions)
    if missing:
        raise ValueError(f"no function ARN for steps: {sorted(missing)}")
    return {
        "Comment": "ec2jobs: validate, bootstrap, launch, then relay the job's output until it is drained",
        "TimeoutSeconds": EXECUTION_TIMEOUT_SECONDS,
        "StartAt": "Route",
        "States": {
            "Route": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.resume_relay", "IsPresent": True, "Next": "Relay"},
                    {"Variable": "$.resume_launch", "IsPresent": True, "Next": "Bootstrap"},
                ],
                "Default": "Validate",
            },
            "Validate": {
                "Type": "Task",
                "Resource": functions["validate"],
                "Parameters": {
                    "input.$": "$",
                    "execution_name.$": "$$.Execution.Name",
                    "execution_arn.$": "$$.Execution.Id",
                },
                "Retry": _retry_transient(2, 3),
                "Catch": [_REJECTED, *_catch()],
                "Next": "Bootstrapped?",
            },
            # Validate passes the team's cached bootstrap record when the job's account and region have one: no
            # Bootstrap step (a hand-off and its reads fewer). Launch sends the job back to Bootstrap if RunInstances
            # says a resource the record names is gone.
            "Bootstrapped?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.bootstrap", "IsPresent": True, "Next": "Launch"}],
                "Default": "Bootstrap",
            },
            # The refused input's execution fails with Validate's sentence (RecordFailure, given no job, only
            # turns the Lambda error's Cause into that sentence).
            "Rejected": {
                "Type": "Task",
                "Resource": functions["record_failure"],
                "Parameters": {"error.$": "$"},
                "Retry": _retry_transient(2, 3),
                "Next": "Failed",
            },
            "Bootstrap": {
                "Type": "Task",
                "Resource": functions["bootstrap"],
                "Retry": _retry_transient(3, 5),
                "Catch": _catch(),
                "Next": "Launch",
            },
            "Launch": {
                "Type": "Task",
                "Resource": functions["launch"],
                "Retry": _retry_transient(5, 6),
                "Catch": _catch(),
                "Next": "Launched?",
            },
            "Launched?": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.launch.next", "IsPresent": True},
                            {"Variable": "$.launch.next", "StringEquals": "wait"},
                        ],
                        "Next": "WaitForCapacity",
                    },
                    {
                        "And": [
                            {"Variable": "$.launch.next", "IsPresent": True},
                            {"Variable": "$.launch.next", "StringEquals": "bootstrap"},
                        ],
                        "Next": "Bootstrap",
                    },
                ],
                "Default": "Relay",
            },
            # WAITING_CAPACITY: no Lambda runs while it waits; Launch re-bootstraps itself if the region changed.
            "WaitForCapacity": {"Type": "Wait", "SecondsPath": "$.launch.wait_seconds", "Next": "Launch"},
            # The job joins a relay shard (docs/relay-fleet.md) and this execution waits, holding no Lambda, for
            # the shard's callback with the relay's outcome; the shard heartbeats the task while it follows the job.
            # A task whose shard died times out (States.Timeout, also HeartbeatTimeout's family) and enrolls again.
            "Relay": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                "Parameters": {
                    "FunctionName": functions["relay"],
                    "Payload": {
                        "job_id.$": "$.job_id",
                        "relay_owner.$": "$$.Execution.Id",  # the relay lease's owner, before `#<shard>`
                        "task_token.$": "$$.Task.Token",
                    },
                },
                "ResultPath": "$.relay",
                "TimeoutSeconds": EXECUTION_TIMEOUT_SECONDS,
                "HeartbeatSeconds": relay_heartbeat_seconds,
                "Retry": [
                    {"ErrorEquals": ["States.Timeout"], "IntervalSeconds": 1, "MaxAttempts": 20, "BackoffRate": 1},
                    *_retry_transient(5, 5, RELAY_THROTTLE_RETRY),
                    # one Relay task spans the whole attempt: its budget of retries too (no wait above 5 minutes)
                    {
                        "ErrorEquals": ["States.ALL"],
                        "IntervalSeconds": 10,
                        "MaxAttempts": 8,
                        "BackoffRate": 2,
                        "MaxDelaySeconds": 300,
                    },
                ],
                "Catch": [
                    {"ErrorEquals": [THROTTLED], "ResultPath": "$.relay_error", "Next": "RelayThrottled"},
                    {"ErrorEquals": ["States.ALL"], "ResultPath": "$.relay_error", "Next": "Done"},
                ],
                "Next": "Drained?",
            },
            "RelayThrottled": _note_relay_throttled(jobs_table),
            "Drained?": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.relay.recover", "IsPresent": True},
                            {"Variable": "$.relay.recover", "BooleanEquals": True},
                        ],
                        "Next": "Recover",
                    },
                    {"Variable": "$.relay.finished", "BooleanEquals": True, "Next": "Done"},
                ],
                "Default": "Relay",
            },
            # The attempt ended and the job relaunches: its instance is terminated, the next attempt begins.
            "Recover": {
                "Type": "Task",
                "Resource": functions["recover"],
                "Parameters": {"job_id.$": "$.job_id", "relay_owner.$": "$$.Execution.Id"},
                "Retry": _retry_transient(5, 6),
                "Catch": _catch(),
                "Next": "Bootstrapped?",  # with the cached record for its region, as after Validate
            },
            "Done": {"Type": "Succeed"},
            "RecordFailure": {
                "Type": "Task",
                "Resource": functions["record_failure"],
                "Retry": _retry_transient(2, 3),
                "Next": "Failed",
            },
            "Failed": {"Type": "Fail", "ErrorPath": "$.Error", "CausePath": "$.Cause"},
        },
    }


def fleet_definition(follow_function: str) -> dict[str, Any]:
    """The relay-fleet state machine: one execution per relay shard, looping its Lambda (`follow`) until the shard
    retires (no jobs for a while) or hands over to a new execution (docs/relay-fleet.md). A crashed invocation is
    retried at once: the same shard takes its jobs back."""
    return {
        "Comment": "ec2jobs: one relay shard, following up to 50 jobs' output",
        "StartAt": "Follow",
        "States": {
            "Follow": {
                "Type": "Task",
                "Resource": follow_function,
                "Parameters": {
                    "shard_id.$": "$.shard_id",
                    "execution_name.$": "$$.Execution.Name",  # only the shard's own execution follows it
                    "execution_started_at.$": "$$.Execution.StartTime",
                },
                "Retry": [
                    {
                        "ErrorEquals": ["States.ALL"],
                        "IntervalSeconds": 1,
                        "MaxAttempts": 10,
                        "BackoffRate": 1.5,
                        "MaxDelaySeconds": 30,
                    },
                ],
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Failed"}],
                "Next": "More?",
            },
            "More?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.shard.retired", "BooleanEquals": True, "Next": "Done"}],
                "Default": "Follow",
            },
            "Done": {"Type": "Succeed"},
            # Its jobs' Relay tasks stop being heartbeaten, time out and enroll on another shard.
            "Failed": {"Type": "Fail", "Error": "RelayShardFailed", "Cause": "the shard's invocations kept failing"},
        },
    }
