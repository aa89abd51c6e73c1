"""The relay fleet's records and Step Functions calls (service/relay_fleet.py).

Shard items live in the state table under pk `relay-fleet` (one item per shard: its job ids, their count, its
heartbeat); listing them is one Query of that partition, never a Scan. A job's enrolment (its shard, its Relay
task's token and its execution) is kept on the job item, in attributes the Job model does not read, so no API
answer or event carries the token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Final

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from controlplane.adapters.dynamodb import _is_condition_failure
from controlplane.service.relay_fleet import SHARD_CAPACITY, Enrolment, Shard

logger = logging.getLogger(__name__)

FLEET_PK: Final = "relay-fleet"
_GONE_TOKEN_ERRORS: Final = frozenset({"TaskTimedOut", "TaskDoesNotExist", "InvalidToken"})


def _written(call: Callable[..., Any], **request: Any) -> bool:
    """One conditional write: True if it was made, False if its condition did not hold."""
    try:
        call(**request)
    except ClientError as error:
        if _is_condition_failure(error):
            return False
        raise
    return True


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class DynamoFleetStore:
    def __init__(self, state_table: Any, jobs_table: Any, capacity: int = SHARD_CAPACITY) -> None:
        self.state = state_table
        self.jobs = jobs_table
        self.capacity = capacity

    @staticmethod
    def _shard(item: dict[str, Any]) -> Shard:
        return Shard(
            shard_id=str(item["sk"]),
            jobs=frozenset(str(j) for j in item.get("jobs", set())),
            count=int(item.get("job_count", 0)),
            heartbeat_at=float(item.get("heartbeat_at", 0)),
            execution=str(item.get("execution", "")),
            started=bool(item.get("started", False)),
            nudged=frozenset(str(j) for j in item.get("nudged", set())),
        )

    def shards(self) -> list[Shard]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(FLEET_PK),
            "ProjectionExpression": "sk, job_count, heartbeat_at, execution, started",
            "ConsistentRead": True,
        }
        while True:
            page = self.state.query(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                return [self._shard(item) for item in items]
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def shard(self, shard_id: str) -> Shard | None:
        item = self.state.get_item(Key={"pk": FLEET_PK, "sk": shard_id}, ConsistentRead=True).get("Item")
        return None if item is None else self._shard(item)

    def create_shard(self, shard_id: str, now: float, execution: str) -> bool:
        return _written(
            self.state.put_item,
            Item={
                "pk": FLEET_PK,
                "sk": shard_id,
                "job_count": 0,
                "heartbeat_at": _decimal(now),
                "execution": execution,
            },
            ConditionExpression="attribute_not_exists(sk)",
        )

    def join(self, shard_id: str, job_id: str, task_token: str, owner: str, superseded: str | None) -> bool:
        """Record the enrolment on the job, then take a slot on the shard (conditional: room left, not there yet)."""
        values = {":shard": shard_id, ":token": task_token, ":owner": owner}
        expression = "SET relay_shard = :shard, relay_token = :token, relay_execution = :owner"
        if superseded:
            expression += ", relay_superseded = :superseded"
            values[":superseded"] = superseded
        return _written(
            self.jobs.update_item,
            Key={"job_id": job_id},
            UpdateExpression=expression,
            ConditionExpression="attribute_exists(job_id)",
            ExpressionAttributeValues=values,
        ) and _written(
            self.state.update_item,
            Key={"pk": FLEET_PK, "sk": shard_id},
            UpdateExpression="ADD job_count :one, jobs :job",
            ConditionExpression="attribute_exists(sk) AND job_count < :cap AND NOT contains(jobs, :id)",
            ExpressionAttributeValues={":one": 1, ":job": {job_id}, ":cap": self.capacity, ":id": job_id},
        )

    def leave(self, shard_id: str, job_id: str, token: str | None = None) -> bool:
        """Free the job's slot on the shard; forget the enrolment if it still names this shard (and, with `token`,
        is still that task's). With `token`, an enrolment made meanwhile on this shard (a retried Relay task) keeps
        the slot: the enrolment is forgotten first, and the slot freed only if it was this task's or names another
        shard now."""
        forgotten = _written(
            self.jobs.update_item,
            Key={"job_id": job_id},
            UpdateExpression="REMOVE relay_shard",
            ConditionExpression="relay_shard = :shard" + (" AND relay_token = :token" if token else ""),
            ExpressionAttributeValues={":shard": shard_id} | ({":token": token} if token else {}),
        )
        if token and not forgotten:
            current = self.enrolment(job_id)
            if current is not None and current.shard_id == shard_id:
                return False  # re-enrolled on this shard meanwhile: the slot is the new enrolment's
        return _written(
            self.state.update_item,
            Key={"pk": FLEET_PK, "sk": shard_id},
            UpdateExpression="ADD job_count :minus DELETE jobs :job",
            ConditionExpression="contains(jobs, :id)",
            ExpressionAttributeValues={":minus": -1, ":job": {job_id}, ":id": job_id},
        )

    def enrolment(self, job_id: str) -> Enrolment | None:
        item = self.jobs.get_item(
            Key={"job_id": job_id},
            ProjectionExpression="job_id, relay_shard, relay_token, relay_execution, relay_superseded",
            ConsistentRead=True,
        ).get("Item")
        if item is None or "relay_token" not in item:
            return None
        shard, superseded = item.get("relay_shard"), item.get("relay_superseded")
        return Enrolment(job_id, str(item["relay_token"]), str(item.get("relay_execution", "")),
                         str(shard) if shard else None, str(superseded) if superseded else None)  # fmt: skip

    def forget_superseded(self, job_id: str, token: str) -> None:
        _written(
            self.jobs.update_item,
            Key={"job_id": job_id},
            UpdateExpression="REMOVE relay_superseded",
            ConditionExpression="relay_superseded = :token",
            ExpressionAttributeValues={":token": token},
        )

    def _update_shard(self, shard_id: str, expression: str, values: dict[str, Any]) -> bool:
        """One UpdateItem of an existing shard item (never creates one: a retired shard stays gone)."""
        return _written(
            self.state.update_item,
            Key={"pk": FLEET_PK, "sk": shard_id},
            UpdateExpression=expression,
            ConditionExpression="attribute_exists(sk)",
            ExpressionAttributeValues=values,
        )

    def hand_over(self, shard_id: str, execution: str) -> bool:
        """The shard's next execution: from now on only it follows the shard's jobs."""
        return self._update_shard(shard_id, "SET execution = :execution", {":execution": execution})

    def heartbeat(self, shard_id: str, now: float) -> bool:
        return self._update_shard(
            shard_id, "SET heartbeat_at = :now, started = :started", {":now": _decimal(now), ":started": True}
        )

    def retire(self, shard_id: str, stale_before: float | None = None) -> bool:
        """Delete the shard's item if it has no jobs (a job enrolled meanwhile keeps it) and, with `stale_before`,
        only if it was last heartbeaten before then (a dead shard's, not one that came back)."""
        condition = "attribute_not_exists(sk) OR job_count <= :zero"
        values: dict[str, Any] = {":zero": 0}
        if stale_before is not None:
            condition = "attribute_not_exists(sk) OR (job_count <= :zero AND heartbeat_at < :stale)"
            values[":stale"] = _decimal(stale_before)
        return _written(
            self.state.delete_item,
            Key={"pk": FLEET_PK, "sk": shard_id},
            ConditionExpression=condition,
            ExpressionAttributeValues=values,
        )

    def nudge(self, shard_id: str, job_id: str) -> bool:
        """Tell the shard its job was cancelled or its attempt ended (the shard reads its item every tick)."""
        return self._update_shard(shard_id, "ADD nudged :job", {":job": {job_id}})

    def clear_nudges(self, shard_id: str, job_ids: frozenset[str]) -> None:
        """The shard passed these nudges on to its loops (a nudge added meanwhile stays)."""
        if job_ids:
            self._update_shard(shard_id, "DELETE nudged :jobs", {":jobs": set(job_ids)})

    def shard_of(self, job_id: str) -> str | None:
        """The shard following the job, if it is enrolled on one."""
        item = self.jobs.get_item(Key={"job_id": job_id}, ProjectionExpression="relay_shard", ConsistentRead=True).get(
            "Item"
        )
        shard = (item or {}).get("relay_shard")
        return str(shard) if shard else None


def _decimal(value: float) -> Any:
    from decimal import Decimal

    return Decimal(str(round(value, 3)))


class StepFunctionsCallbacks:
    """SendTaskSuccess / SendTaskFailure / SendTaskHeartbeat; False when the token is no longer waited on."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, operation: str, **kwargs: Any) -> bool:
        try:
            getattr(self.client, operation)(**kwargs)
        except ClientError as error:
            if _error_code(error) in _GONE_TOKEN_ERRORS:
                logger.info("task token no longer waited on", extra={"operation": operation})
                return False
            raise
        return True

    def succeed(self, token: str, output: dict[str, Any]) -> bool:
        return self._call("send_task_success", taskToken=token, output=json.dumps(output))

    def fail(self, token: str, error: str, cause: str) -> bool:
        return self._call("send_task_failure", taskToken=token, error=error[:256], cause=cause[:32768])

    def heartbeat(self, token: str) -> bool:
        return self._call("send_task_heartbeat", taskToken=token)


class ShardExecutions:
    """Starts a shard's execution of the relay-fleet state machine (named after the shard: idempotent)."""

    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self.client = client
        self.state_machine_arn = state_machine_arn

    def start(self, shard_id: str, execution: str) -> None:
        try:
            self.client.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=execution,
                input=json.dumps({"shard_id": shard_id}),
            )
        except ClientError as error:
            if _error_code(error) != "ExecutionAlreadyExists":
                raise
