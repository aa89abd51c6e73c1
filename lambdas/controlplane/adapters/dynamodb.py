"""DynamoDB data access. Every read is a GetItem or a Query on a key/GSI (never a Scan); every job state change
is a conditional UpdateItem that encodes the lifecycle table, so a stale writer loses cleanly."""

from __future__ import annotations

import base64
import binascii
import builtins
import datetime as dt
import json
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from controlplane.adapters import schema
from controlplane.core import outcomes
from controlplane.core.errors import Conflict, InvalidRequest, TransitionRefused
from controlplane.core.lifecycle import ACTIVE, ADMITTED, FailureReason, JobStatus, predecessors
from controlplane.core.models import BootstrapRecord, Job, Provider, utcnow
from controlplane.core.ports import CachedImage, JobPage
from controlplane.core.spec import TaskSpec
from controlplane.core.tokens import DEFAULT_TOKEN_DAYS, TeamRecord, TokenRecord

ACTIVE_PARTITION = "ACTIVE"
PROVIDER_REGISTRY = "PROVIDERS"
_BAD_CURSOR = "cursor is not valid: pass back the next_cursor value from the previous page"
_IMMUTABLE = frozenset({"job_id", "team_id", "status", "team_status", "active", "active_sk", "version", "created_at"})


# The job's current attempt is :attempt (a job written before attempts existed is on attempt 1).
_ATTEMPT_IS = "(attempt = :attempt OR (attribute_not_exists(attempt) AND :attempt = :one))"


def _is_condition_failure(error: ClientError) -> bool:
    """A lost condition, never any other failure (a cancelled transaction counts only if a condition failed)."""
    code = error.response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    if code == "TransactionCanceledException":
        reasons = error.response.get("CancellationReasons", [])
        return any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons)
    return False


def _to_dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _instant(value: dt.datetime) -> str:
    """A UTC instant as a fixed-width ISO string, so that DynamoDB compares instants as strings correctly."""
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value


def encode_cursor(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(_from_dynamo(key), sort_keys=True).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, expected_keys: set[str]) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequest(_BAD_CURSOR) from None
    if not isinstance(key, dict) or set(key) != expected_keys or not all(isinstance(v, str) for v in key.values()):
        raise InvalidRequest(_BAD_CURSOR)
    return key


class DynamoTeamStore:
    """Teams and tokens in the state table (docs/tokens.md). Per token, two items written with single-item calls:
    `TOKEN#<sha256>/TOKEN` (what the authorizer reads: one GetItem) and `TEAM#<team>/TOKEN#<token id>` (what a
    team's listing Queries; it holds the hash so that a revocation can find the first). The token is never stored."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def create_team(self, team_id: str, name: str) -> None:
        try:
            self.table.put_item(
                Item={"pk": f"TEAM#{team_id}", "sk": "TEAM", "name": name, "created_at": utcnow().isoformat()},
                ConditionExpression=Attr("pk").not_exists(),
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise

    def get_team(self, team_id: str) -> TeamRecord | None:
        item = self.table.get_item(Key={"pk": f"TEAM#{team_id}", "sk": "TEAM"}, ConsistentRead=True).get("Item")
        if not item:
            return None
        return TeamRecord(
            team_id=team_id,
            deleted=bool(item.get("deleted_at")),
            usage_key=str(item["usage_key"]) if item.get("usage_key") else None,
            usage_key_id=str(item["usage_key_id"]) if item.get("usage_key_id") else None,
        )

    def set_usage_key(self, team_id: str, key_id: str, value: str) -> bool:
        """Record the team's usage key unless it already has one (False then: the caller deletes its key)."""
        try:
            self.table.update_item(
                Key={"pk": f"TEAM#{team_id}", "sk": "TEAM"},
                UpdateExpression="SET usage_key = :value, usage_key_id = :id",
                ConditionExpression=Attr("pk").exists() & Attr("usage_key").not_exists(),
                ExpressionAttributeValues={":value": value, ":id": key_id},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def mark_team_deleted(self, team_id: str) -> None:
        self.table.update_item(
            Key={"pk": f"TEAM#{team_id}", "sk": "TEAM"},
            UpdateExpression="SET deleted_at = if_not_exists(deleted_at, :now)",
            ConditionExpression=Attr("pk").exists(),
            ExpressionAttributeValues={":now": utcnow().isoformat()},
        )

    def put_token(self, token_hash: str, record: TokenRecord) -> None:
        fields = {
            "team_id": record.team_id,
            "token_id": record.token_id,
            "label": record.label,
            "prefix": record.prefix,
            "created_at": record.created_at.isoformat(),
            "expires_at": record.expires_at.isoformat(),
        }
        # The listing item first: a failure in between leaves a listed token that never worked, not a working
        # token nobody can see or revoke.
        self.table.put_item(
            Item={"pk": f"TEAM#{record.team_id}", "sk": f"TOKEN#{record.token_id}", "token_hash": token_hash, **fields},
            ConditionExpression=Attr("pk").not_exists(),
        )
        self.table.put_item(
            Item={"pk": f"TOKEN#{token_hash}", "sk": "TOKEN", **fields}, ConditionExpression=Attr("pk").not_exists()
        )

    def token(self, token_hash: str) -> TokenRecord | None:
        item = self.table.get_item(Key={"pk": f"TOKEN#{token_hash}", "sk": "TOKEN"}).get("Item")
        if not item:
            return None
        return _token_record(item, fallback_id="tok-" + token_hash[:12])

    def list_tokens(self, team_id: str) -> builtins.list[TokenRecord]:
        found: builtins.list[TokenRecord] = []
        query: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(f"TEAM#{team_id}") & Key("sk").begins_with("TOKEN#"),
            "ConsistentRead": True,
        }
        while True:
            page = self.table.query(**query)
            found += [_token_record(item, fallback_id=str(item["sk"]).removeprefix("TOKEN#")) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return found
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete_token(self, team_id: str, token_id: str) -> bool:
        """Delete the credential item (only if it is this team's), then the listing item. False: no such token."""
        listing = {"pk": f"TEAM#{team_id}", "sk": f"TOKEN#{token_id}"}
        item = self.table.get_item(Key=listing, ConsistentRead=True).get("Item")
        if not item:
            return False
        try:
            self.table.delete_item(
                Key={"pk": f"TOKEN#{item['token_hash']}", "sk": "TOKEN"},
                ConditionExpression=Attr("team_id").eq(team_id),
            )
        except ClientError as error:
            if not _is_condition_failure(error):  # already gone: a concurrent revocation
                raise
        self.table.delete_item(Key=listing)
        return True


def _token_record(item: dict[str, Any], fallback_id: str) -> TokenRecord:
    created = dt.datetime.fromisoformat(str(item.get("created_at") or "1970-01-01T00:00:00+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    if item.get("expires_at"):
        expires = dt.datetime.fromisoformat(str(item["expires_at"]))
    else:  # issued before tokens expired: the default lifetime from its creation
        expires = created + dt.timedelta(days=DEFAULT_TOKEN_DAYS)
    return TokenRecord(
        token_id=str(item.get("token_id") or fallback_id),
        team_id=str(item["team_id"]),
        label=str(item.get("label") or ""),
        prefix=str(item.get("prefix") or ""),
        created_at=created,
        expires_at=expires,
    )


class DynamoProviderStore:
    def __init__(self, table: Any) -> None:
        self.table = table
        self.client = table.meta.client

    def create(self, provider: Provider) -> None:
        """The provider item and a name lock are written together, so names are unique within a team."""
        item = _to_dynamo(provider.model_dump()) | {
            "pk": f"TEAM#{provider.team_id}",
            "sk": f"PROVIDER#{provider.provider_id}",
        }
        lock = {
            "pk": f"TEAM#{provider.team_id}",
            "sk": f"PROVIDERNAME#{provider.name.lower()}",
            "provider_id": provider.provider_id,
        }
        registered = {  # the registry the reconciler walks (every provider, without a Scan)
            "pk": PROVIDER_REGISTRY,
            "sk": provider.provider_id,
            "team_id": provider.team_id,
            "region": provider.region,
        }
        try:
            self.client.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table.name,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.table.name,
                            "Item": lock,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Put": {"TableName": self.table.name, "Item": registered}},
                ]
            )
        except ClientError as error:
            if _is_condition_failure(error):
                raise Conflict(f"a provider named {provider.name!r} already exists in this team") from None
            raise

    def get(self, team_id: str, provider_id: str) -> Provider | None:
        item = self.table.get_item(Key={"pk": f"TEAM#{team_id}", "sk": f"PROVIDER#{provider_id}"}).get("Item")
        return _provider(item) if item else None

    def list(self, team_id: str) -> list[Provider]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(f"TEAM#{team_id}") & Key("sk").begins_with("PROVIDER#")
        }
        while True:
            page = self.table.query(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                return [_provider(item) for item in items]
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def delete(self, provider: Provider) -> None:
        self.client.transact_write_items(
            TransactItems=[
                {
                    "Delete": {
                        "TableName": self.table.name,
                        "Key": {"pk": f"TEAM#{provider.team_id}", "sk": f"PROVIDER#{provider.provider_id}"},
                    }
                },
                {
                    "Delete": {
                        "TableName": self.table.name,
                        "Key": {"pk": f"TEAM#{provider.team_id}", "sk": f"PROVIDERNAME#{provider.name.lower()}"},
                    }
                },
                {
                    "Delete": {
                        "TableName": self.table.name,
                        "Key": {"pk": PROVIDER_REGISTRY, "sk": provider.provider_id},
                    }
                },
            ]
        )

    def registered(self) -> builtins.list[tuple[str, str]]:
        """(team_id, provider_id) of every provider, from the registry partition (a Query, not a Scan)."""
        found: builtins.list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {"KeyConditionExpression": Key("pk").eq(PROVIDER_REGISTRY)}
        while True:
            page = self.table.query(**kwargs)
            found += [(str(item["team_id"]), str(item["sk"])) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return found
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _provider(item: dict[str, Any]) -> Provider:
    return Provider.model_validate({k: v for k, v in _from_dynamo(item).items() if k not in {"pk", "sk"}})


JobListener = Callable[[Job | None, Job], None]  # (before, after) of every created job and state change


class DynamoJobStore:
    def __init__(self, table: Any, listener: JobListener | None = None) -> None:
        self.table = table
        self.listener = listener

    def _notify(self, before: Job | None, after: Job) -> None:
        if self.listener is not None:
            self.listener(before, after)

    # -- items ----------------------------------------------------------------------------------------------

    @staticmethod
    def _item(job: Job) -> dict[str, Any]:
        item = _to_dynamo(job.model_dump(exclude={"spec"}, exclude_none=True))
        if job.spec is not None:
            item["spec"] = job.spec.model_dump_json(exclude_none=True)
        item["team_status"] = f"{job.team_id}#{job.status}"
        if job.status in ADMITTED:
            item["active"] = ACTIVE_PARTITION
            item["active_sk"] = f"{job.provider_id}#{job.region}#{job.job_id}"
        return dict(item)

    @staticmethod
    def _job(item: dict[str, Any]) -> Job:
        data = _from_dynamo(item)
        if "spec" in data:
            data["spec"] = TaskSpec.model_validate_json(data["spec"])
        for internal in ("team_status", "active", "active_sk"):
            data.pop(internal, None)
        return Job.model_validate(data)

    # -- writes ---------------------------------------------------------------------------------------------

    def create(self, job: Job) -> tuple[Job, bool]:
        """Insert a new job; if the id exists already (an idempotent retry) return the stored one instead."""
        try:
            self.table.put_item(Item=self._item(job), ConditionExpression=Attr("job_id").not_exists())
            self._notify(None, job)
            return job, True
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
        existing = self.get(job.job_id)
        if existing is None:  # deleted in between: cannot happen today (jobs are never deleted), be explicit
            raise Conflict(f"job {job.job_id} could not be created; retry the request")
        return existing, False

    def transition(
        self,
        job_id: str,
        target: JobStatus,
        *,
        expected: JobStatus | Collection[JobStatus] | None = None,
        fields: dict[str, Any] | None = None,
        attempt: int | None = None,
    ) -> Job:
        """Move a job to `target` if the lifecycle allows it from its *current* state (and, if given, only from
        `expected`, and only while `attempt` is the job's current attempt). The check and the write are one
        conditional UpdateItem: a stale writer gets TransitionRefused."""
        current = self.get(job_id)
        if current is None:
            raise TransitionRefused(job_id, None, target)
        allowed = sorted(predecessors(target))
        if expected is not None:
            wanted = {expected} if isinstance(expected, JobStatus) else set(expected)
            allowed = [state for state in allowed if state in wanted]
        if current.status not in allowed or (attempt is not None and current.attempt != attempt):
            raise TransitionRefused(job_id, current.status, target)
        now = utcnow()
        updates: dict[str, Any] = dict(fields or {})
        # team_id never changes, so the (team, status) index key can be written exactly in the same update.
        updates.update({"status": str(target), "team_status": f"{current.team_id}#{target}", "updated_at": now})
        if "region" in updates and target in ACTIVE:  # region fallback: the active index's sort key follows it
            updates["active_sk"] = f"{current.provider_id}#{updates['region']}#{job_id}"
        if current.status not in ADMITTED and target in ADMITTED:  # admitted from the queue: the reconciler's now
            updates["active"] = ACTIVE_PARTITION
            updates["active_sk"] = f"{current.provider_id}#{updates.get('region', current.region)}#{job_id}"
        removes: list[str] = []
        if target.terminal:
            updates.setdefault("ended_at", now)
            removes = ["active", "active_sk"]
            for name, value in outcomes.billing(current, updates["ended_at"]).items():
                updates.setdefault(name, value)
        values: dict[str, Any] = {f":from{i}": str(state) for i, state in enumerate(allowed)}
        condition = f"attribute_exists(job_id) AND #status IN ({', '.join(values)})"
        if attempt is not None:
            condition += f" AND {_ATTEMPT_IS}"
            values[":attempt"] = attempt
        changed = self._update(job_id, updates, removes, condition, values, str(target))
        self._notify(current, changed)
        return changed

    def set_instance_state(self, job_id: str, state: str) -> None:
        """Record the instance's EC2 state (also on an ended job: its status stays, only this observation changes)."""
        self.table.update_item(
            Key={"job_id": job_id},
            UpdateExpression="SET instance_state = :s",
            ConditionExpression="attribute_exists(job_id)",
            ExpressionAttributeValues={":s": state},
        )

    # -- the relay lease: at most one relay loop streams a job's output ---------------------------------------

    def claim_relay(self, job_id: str, owner: str, until: dt.datetime, now: dt.datetime) -> bool:
        """Hold the job's relay lease for `owner` until `until`: granted when nobody holds it, it expired, or
        `owner` holds it already; only while the job is PROVISIONING or RUNNING, or FAILED / SPOT_INTERRUPTED (its
        instance streams on through AWS's two-minute notice), or CANCELLED (its instance stops the job while the
        relay reads the tail; the relay checks the window). One conditional UpdateItem (not a state change: the
        version stays). False when another relay loop holds it or the job is in another state."""
        return self._lease_write(
            job_id,
            "SET relay_owner = :owner, relay_lease_until = :until",
            "(#status IN (:provisioning, :running, :recovering, :cancelled) OR "
            "(#status = :failed AND failure_reason = :spot)) AND "
            "(attribute_not_exists(relay_lease_until) OR relay_lease_until < :now OR relay_owner = :owner)",
            {
                ":owner": owner,
                ":until": _instant(until),
                ":now": _instant(now),
                ":provisioning": str(JobStatus.PROVISIONING),
                ":running": str(JobStatus.RUNNING),
                ":recovering": str(JobStatus.RECOVERING),
                ":cancelled": str(JobStatus.CANCELLED),
                ":failed": str(JobStatus.FAILED),
                ":spot": str(FailureReason.SPOT_INTERRUPTED),
            },
        )

    def shorten_relay(self, job_id: str, owner: str, until: dt.datetime) -> bool:
        """`owner` ended an invocation and expects its loop back before `until` (a dead loop is then seen soon)."""
        return self._lease_write(
            job_id,
            "SET relay_lease_until = :until",
            "relay_owner = :owner",
            {":owner": owner, ":until": _instant(until)},
        )

    def note_relay_restart(self, job_id: str, seen_restarts: int, now: dt.datetime, lease_ended: bool = True) -> bool:
        """Count a relay loop restart (compare-and-set on the count, so two reconcilers cannot both restart). With
        `lease_ended`, only while no loop holds the relay lease: a sweep decides on jobs read seconds before, and a
        loop that claimed the lease meanwhile is alive."""
        lease = " AND (attribute_not_exists(relay_lease_until) OR relay_lease_until < :now)" if lease_ended else ""
        return self._lease_write(
            job_id,
            "SET relay_restarts = :next, relay_restarted_at = :now",
            "#status IN (:provisioning, :running, :recovering, :waiting) AND "
            "(relay_restarts = :seen OR (attribute_not_exists(relay_restarts) AND :seen = :zero))" + lease,
            {
                ":next": seen_restarts + 1,
                ":seen": seen_restarts,
                ":zero": 0,
                ":now": _instant(now),
                ":provisioning": str(JobStatus.PROVISIONING),
                ":running": str(JobStatus.RUNNING),
                ":recovering": str(JobStatus.RECOVERING),
                ":waiting": str(JobStatus.WAITING_CAPACITY),
            },
        )

    def _lease_write(self, job_id: str, expression: str, condition: str, values: dict[str, Any]) -> bool:
        names = {"#status": "status"} if "#status" in condition else None
        try:
            self.table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=f"attribute_exists(job_id) AND {condition}",
                ExpressionAttributeValues=values,
                **({"ExpressionAttributeNames": names} if names else {}),
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def by_instance(self, instance_id: str) -> Job | None:
        """The job an instance was launched for (the by_instance index), if any."""
        page = self.table.query(
            IndexName=schema.JOBS_BY_INSTANCE, KeyConditionExpression=Key("instance_id").eq(instance_id), Limit=1
        )
        if not page["Items"]:
            return None
        return self.get(str(page["Items"][0]["job_id"]))

    def update(
        self,
        job_id: str,
        fields: dict[str, Any],
        *,
        expected: JobStatus | Collection[JobStatus] | None = None,
        attempt: int | None = None,
    ) -> Job:
        """Change non-status fields; refuses terminal jobs (their record is final) and, if given, other states or
        another attempt than `attempt`."""
        states = sorted(ACTIVE) if expected is None else [expected] if isinstance(expected, JobStatus) else expected
        values: dict[str, Any] = {f":state{i}": str(state) for i, state in enumerate(sorted(states))}
        condition = f"attribute_exists(job_id) AND #status IN ({', '.join(values)})"
        if attempt is not None:
            condition += f" AND {_ATTEMPT_IS}"
            values[":attempt"] = attempt
        forbidden = sorted(set(fields) & _IMMUTABLE)
        if forbidden:
            raise ValueError(f"update() cannot change {forbidden}; use transition()")
        updates = dict(fields) | {"updated_at": utcnow()}
        if fields.get("region"):  # region fallback: the active index's sort key follows it (only active jobs change)
            current = self.get(job_id)
            if current is not None:
                updates["active_sk"] = f"{current.provider_id}#{fields['region']}#{job_id}"
        return self._update(job_id, updates, [], condition, values, "an update")

    def _update(
        self,
        job_id: str,
        updates: dict[str, Any],
        removes: list[str],
        condition: str,
        values: dict[str, Any],
        attempted: str,
    ) -> Job:
        names = {"#status": "status", "#version": "version"}
        values = dict(values) | {":zero": 0, ":one": 1}
        sets = ["#version = if_not_exists(#version, :zero) + :one"]
        remove_names = []
        for i, (field_name, value) in enumerate(updates.items()):
            names[f"#f{i}"] = field_name
            if value is None:
                remove_names.append(f"#f{i}")
            else:
                sets.append(f"#f{i} = :v{i}")
                values[f":v{i}"] = _to_dynamo(value)
        for i, field_name in enumerate(removes):
            names[f"#r{i}"] = field_name
            remove_names.append(f"#r{i}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(remove_names) if remove_names else "")
        try:
            result = self.table.update_item(
                Key={"job_id": job_id},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
            current = self.get(job_id)
            raise TransitionRefused(job_id, current.status if current else None, attempted) from None
        return self._job(result["Attributes"])

    # -- reads ----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        item = self.table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return self._job(item) if item else None

    def get_many(self, job_ids: builtins.list[str]) -> dict[str, Job]:
        """Jobs by id, 100 per BatchGetItem (eventually consistent: for sweeps, not for decisions that race)."""
        found: dict[str, Job] = {}
        wanted = sorted(set(job_ids))
        client, name = self.table.meta.client, self.table.name
        for start in range(0, len(wanted), 100):
            request: dict[str, Any] = {name: {"Keys": [{"job_id": job_id} for job_id in wanted[start : start + 100]]}}
            for _ in range(8):  # unprocessed keys (throttling) are retried a few times, then left for the next sweep
                response = client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(name, []):
                    job = self._job(item)
                    found[job.job_id] = job
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
        return found

    def list_for_team(self, team_id: str, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage:
        if status is None:
            index, partition = schema.JOBS_BY_TEAM, Key("team_id").eq(team_id)
            key_names = {"job_id", "team_id", "created_at"}
        else:
            index, partition = schema.JOBS_BY_TEAM_STATUS, Key("team_status").eq(f"{team_id}#{status}")
            key_names = {"job_id", "team_status", "created_at"}
        kwargs: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": partition,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if cursor:
            start = decode_cursor(cursor, key_names)
            owner = start.get("team_id") or start["team_status"].rpartition("#")[0]
            if owner != team_id:  # a cursor from another team's listing
                raise InvalidRequest(_BAD_CURSOR)
            kwargs["ExclusiveStartKey"] = start
        page = self.table.query(**kwargs)
        last = page.get("LastEvaluatedKey")
        return JobPage(
            jobs=[self._job(item) for item in page["Items"]], next_cursor=encode_cursor(last) if last else None
        )

    def active_jobs(self) -> list[Job]:
        """Every non-terminal job (the sparse `active` index, ordered by provider and region)."""
        jobs: list[Job] = []
        kwargs: dict[str, Any] = {
            "IndexName": schema.JOBS_ACTIVE,
            "KeyConditionExpression": Key("active").eq(ACTIVE_PARTITION),
        }
        while True:
            page = self.table.query(**kwargs)
            jobs += [self._job(item) for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                return jobs
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def has_active_jobs(self, provider_id: str) -> bool:
        page = self.table.query(
            IndexName=schema.JOBS_ACTIVE,
            KeyConditionExpression=Key("active").eq(ACTIVE_PARTITION) & Key("active_sk").begins_with(f"{provider_id}#"),
            Limit=1,
        )
        return bool(page["Items"])


class DynamoBootstrapCache:
    """What bootstrap made for a provider account + region: PROVIDER#<id> / BOOTSTRAP#<region> in the state table."""

    def __init__(self, table: Any) -> None:
        self.table = table

    @staticmethod
    def _key(provider_id: str, region: str) -> dict[str, str]:
        return {"pk": f"PROVIDER#{provider_id}", "sk": f"BOOTSTRAP#{region}"}

    def get(self, provider_id: str, region: str) -> BootstrapRecord | None:
        item = self.table.get_item(Key=self._key(provider_id, region)).get("Item")
        if not item:
            return None
        return BootstrapRecord.model_validate({k: v for k, v in _from_dynamo(item).items() if k not in {"pk", "sk"}})

    def put(self, record: BootstrapRecord) -> None:
        self.table.put_item(Item=_to_dynamo(record.model_dump()) | self._key(record.provider_id, record.region))

    def forget(self, provider_id: str, region: str) -> None:
        self.table.delete_item(Key=self._key(provider_id, region))

    def regions(self, provider_id: str) -> list[str]:
        """The regions this provider's team was bootstrapped in (where its instances can be)."""
        page = self.table.query(
            KeyConditionExpression=Key("pk").eq(f"PROVIDER#{provider_id}") & Key("sk").begins_with("BOOTSTRAP#")
        )
        return [str(item["sk"]).removeprefix("BOOTSTRAP#") for item in page["Items"]]


class DynamoImageCache:
    """The newest AMI per region and image family: IMAGE#<region> / <family>, with an expiry."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, region: str, family: str) -> CachedImage | None:
        item = self.table.get_item(Key={"pk": f"IMAGE#{region}", "sk": family}).get("Item")
        if not item:
            return None
        return CachedImage(
            image_id=str(item["image_id"]),
            name=str(item.get("name", "")),
            root_device_name=str(item.get("root_device_name", "/dev/sda1")),
            expires_at=float(item["expires_at"]),
            min_disk_gib=int(item.get("min_disk_gib", 0)),
        )

    def put(self, region: str, family: str, image: CachedImage) -> None:
        self.table.put_item(
            Item={
                "pk": f"IMAGE#{region}",
                "sk": family,
                "image_id": image.image_id,
                "name": image.name,
                "root_device_name": image.root_device_name,
                "min_disk_gib": image.min_disk_gib,
                "expires_at": Decimal(str(image.expires_at)),
            }
        )
