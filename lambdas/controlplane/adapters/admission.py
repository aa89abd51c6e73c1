"""Admission state in the state table (docs/budgets.md):

- `TEAM#<team>/LIMITS`: the team's limits (core/admission.py Limits), written by an admin.
- `ADMISSION/TEAM#<team>`: the team's ledger — admitted jobs' claims, the queue, each month's measured spend — one
  item, replaced whole by a write conditional on its `version`: two admissions that race cannot both take the last
  slot or the last dollars (the loser re-reads and decides again). All teams' ledgers share one partition key, so
  the reconciler finds them with one Query (no Scan).
- `USAGE#<month>/TEAM#<team>`: the month's report — spend, jobs by final state, GPU-hours by type, per provider —
  added to in the same transaction that books an ended job into the ledger, so each job counts exactly once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from controlplane.adapters.dynamodb import _is_condition_failure
from controlplane.core.admission import Claim, Ledger, Limits, Request, UsageDelta

LEDGER_PARTITION = "ADMISSION"


def _team_key(team_id: str) -> str:
    return f"TEAM#{team_id}"


def _claim(raw: dict[str, Any]) -> Claim:
    return Claim(
        month=str(raw["month"]),
        reserved=Decimal(str(raw["reserved"])),
        gpus=int(raw.get("gpus", 0)),
        gpu_type=raw.get("gpu_type") or None,
        since=str(raw.get("since", "")),
        provider_id=str(raw.get("provider_id", "")),
    )


def _claim_item(claim: Claim) -> dict[str, Any]:
    item: dict[str, Any] = {
        "month": claim.month,
        "reserved": claim.reserved,
        "gpus": claim.gpus,
        "since": claim.since,
        "provider_id": claim.provider_id,
    }
    if claim.gpu_type:
        item["gpu_type"] = claim.gpu_type
    return item


def _request(job_id: str, raw: dict[str, Any]) -> Request:
    return Request(
        job_id=job_id,
        claim=_claim(raw["claim"]),
        hourly_price=Decimal(str(raw["hourly_price"])),
        priority=int(raw.get("priority", 0)),
        queued_at=str(raw.get("queued_at", "")),
        queue_deadline=str(raw.get("queue_deadline", "")),
    )


def _request_item(request: Request) -> dict[str, Any]:
    return {
        "claim": _claim_item(request.claim),
        "hourly_price": request.hourly_price,
        "priority": request.priority,
        "queued_at": request.queued_at,
        "queue_deadline": request.queue_deadline,
    }


def ledger_from_item(item: dict[str, Any] | None) -> Ledger:
    if not item:
        return Ledger()
    return Ledger(
        version=int(item.get("version", 0)),
        holds={job_id: _claim(raw) for job_id, raw in (item.get("holds") or {}).items()},
        queue={job_id: _request(job_id, raw) for job_id, raw in (item.get("queue") or {}).items()},
        spent={month: Decimal(str(value)) for month, value in (item.get("spent") or {}).items()},
    )


class DynamoAdmissionStore:
    def __init__(self, table: Any) -> None:
        self.table = table

    # -- limits -------------------------------------------------------------------------------------------------

    def limits(self, team_id: str) -> Limits | None:
        item = self.table.get_item(Key={"pk": _team_key(team_id), "sk": "LIMITS"}, ConsistentRead=True).get("Item")
        if not item:
            return None
        return Limits.model_validate_json(str(item["limits"]))

    def set_limits(self, team_id: str, limits: Limits | None) -> None:
        key = {"pk": _team_key(team_id), "sk": "LIMITS"}
        if limits is None:
            self.table.delete_item(Key=key)
            return
        self.table.put_item(Item=key | {"limits": limits.model_dump_json(exclude_defaults=False)})

    # -- the ledger ---------------------------------------------------------------------------------------------

    def ledger(self, team_id: str) -> Ledger:
        key = {"pk": LEDGER_PARTITION, "sk": _team_key(team_id)}
        return ledger_from_item(self.table.get_item(Key=key, ConsistentRead=True).get("Item"))

    def ledgers(self) -> list[tuple[str, Ledger]]:
        """Every team's ledger (one partition: Query pages, never a Scan)."""
        found: list[tuple[str, Ledger]] = []
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(LEDGER_PARTITION), "ConsistentRead": True}
        while True:
            page = self.table.query(**kwargs)
            for item in page["Items"]:
                found.append((str(item["sk"]).removeprefix("TEAM#"), ledger_from_item(item)))
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def save(self, team_id: str, before: Ledger, after: Ledger, usage: UsageDelta | None = None) -> bool:
        """Replace the ledger if nobody changed it since `before` was read (and add `usage` to the month's report in
        the same transaction). False when another writer got there first: read again and decide again."""
        item = {
            "pk": LEDGER_PARTITION,
            "sk": _team_key(team_id),
            "version": before.version + 1,
            "holds": {job_id: _claim_item(claim) for job_id, claim in after.holds.items()},
            "queue": {job_id: _request_item(request) for job_id, request in after.queue.items()},
            "spent": dict(after.spent),
        }
        if before.version == 0:
            condition, values = "attribute_not_exists(pk)", None
        else:
            condition, values = "version = :v", {":v": before.version}
        put: dict[str, Any] = {"Item": item, "ConditionExpression": condition}
        if values:
            put["ExpressionAttributeValues"] = values
        try:
            if usage is None:
                self.table.put_item(**put)
            else:
                self._transact(team_id, put, usage)
        except ClientError as error:
            if _is_condition_failure(error) or _cancelled_by_condition(error):
                return False
            raise
        return True

    def _transact(self, team_id: str, put: dict[str, Any], usage: UsageDelta) -> None:
        names = {"#spent": "spent", "#jobs": f"jobs#{usage.status}", "#pspent": f"provider_spent#{usage.provider_id}"}
        values: dict[str, Any] = {":cost": usage.cost, ":one": 1}
        adds = ["#spent :cost", "#jobs :one", "#pspent :cost", "#pjobs :one"]
        names["#pjobs"] = f"provider_jobs#{usage.provider_id}"
        if usage.gpu_type and usage.gpu_hours:
            names["#gpuh"] = f"gpu_hours#{usage.gpu_type}"
            values[":gpuh"] = usage.gpu_hours
            adds.append("#gpuh :gpuh")
        # The resource's client: boto3 serialises the values (as for Table calls).
        client, table = self.table.meta.client, self.table.name
        client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": table, **put}},
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"pk": f"USAGE#{usage.month}", "sk": _team_key(team_id)},
                        "UpdateExpression": "ADD " + ", ".join(adds),
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                },
            ]
        )

    # -- the usage report ---------------------------------------------------------------------------------------

    def usage(self, month: str, team_id: str) -> dict[str, Any]:
        key = {"pk": f"USAGE#{month}", "sk": _team_key(team_id)}
        return dict(self.table.get_item(Key=key, ConsistentRead=True).get("Item") or {})

    def usage_all(self, month: str) -> dict[str, dict[str, Any]]:
        """Every team's report for the month (one partition: Query pages)."""
        found: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(f"USAGE#{month}"), "ConsistentRead": True}
        while True:
            page = self.table.query(**kwargs)
            for item in page["Items"]:
                found[str(item["sk"]).removeprefix("TEAM#")] = dict(item)
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _cancelled_by_condition(error: ClientError) -> bool:
    """A transaction refused because a condition failed (not throttling or a conflict with another transaction,
    which TransactionConflict / ThrottlingError report and the caller also retries as a lost race)."""
    if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = error.response.get("CancellationReasons") or []
    codes = {str(reason.get("Code", "")) for reason in reasons}
    return bool(codes & {"ConditionalCheckFailed", "TransactionConflict"}) or not reasons
