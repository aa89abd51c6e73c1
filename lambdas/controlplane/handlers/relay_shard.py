"""The relay fleet's Lambda handlers (docs/relay-fleet.md):

- `enroll`: the job workflow's Relay step, invoked by Step Functions with `lambda:invoke.waitForTaskToken`: puts
  the job on a relay shard and returns at once; the execution then waits (no Lambda held) for the shard's callback.
- `follow`: one invocation of a relay shard (the relay-fleet state machine loops it): follows its jobs' output.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from controlplane.handlers import container

logger = Logger(service="ec2jobs-relay-fleet")
_wired: dict[str, Any] = {}


def _fleet() -> tuple[Any, Any, Any]:
    """The fleet's store, callbacks and shard starter (built on first use, kept for the container's life)."""
    if not _wired:
        from controlplane import config
        from controlplane.adapters import aws
        from controlplane.adapters.relay_fleet import DynamoFleetStore, ShardExecutions, StepFunctionsCallbacks

        settings = config.get()
        dynamodb = aws.resource("dynamodb")
        states = aws.client("stepfunctions")
        _wired["store"] = DynamoFleetStore(dynamodb.Table(settings.state_table), dynamodb.Table(settings.jobs_table))
        _wired["callbacks"] = StepFunctionsCallbacks(states)
        _wired["starter"] = ShardExecutions(states, settings.relay_fleet_arn or "")
    return _wired["store"], _wired["callbacks"], _wired["starter"]


def wire() -> None:
    """What a shard's first invocation builds before its first tick (bench/coldstart.py times it): the relay's
    service (its S3, STS and Secrets Manager clients are made at a job loop's first use of them) and the fleet's
    store and Step Functions client, which the first tick uses (it reads and heartbeats the shard's item and its
    jobs' tasks)."""
    container.relayer()
    _fleet()


@logger.inject_lambda_context
def enroll(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Relay step: {job_id, relay_owner (the execution), task_token} → the job follows on a shard."""
    from controlplane.service.relay_fleet import Enroller

    store, _, starter = _fleet()
    job_id = str(event["job_id"])
    shard_id = Enroller(store, starter).enroll(job_id, str(event["task_token"]), str(event["relay_owner"]))
    logger.info("job enrolled", extra={"job_id": job_id, "shard": shard_id})
    return {"job_id": job_id, "shard_id": shard_id}


def _age_seconds(started: Any) -> float:
    if not isinstance(started, str):
        return 0.0
    try:
        moment = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, (dt.datetime.now(dt.UTC) - moment).total_seconds())


@logger.inject_lambda_context
def follow(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """One shard invocation: {shard_id, execution_started_at} → {shard: {retired, ...}} (retired ends the loop)."""
    from controlplane import config
    from controlplane.service.relay_fleet import ShardRunner

    store, callbacks, starter = _fleet()
    runner = ShardRunner(store, callbacks, container.relayer(), starter, idle_seconds=config.get().relay_idle_seconds)
    report = runner.follow(
        str(event["shard_id"]),
        lambda: context.get_remaining_time_in_millis() / 1000,
        _age_seconds(event.get("execution_started_at")),
        str(event.get("execution_name") or ""),
    )
    logger.info("relay shard invocation ended", extra=report.as_state())
    return {"shard_id": report.shard_id, "shard": report.as_state()}
