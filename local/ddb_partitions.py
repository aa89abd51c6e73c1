"""DynamoDB's per-partition write limit, in the emulator (moto has none: it writes as fast as Python can).

AWS: every partition serves at most 1,000 write units per second, a write unit being one write of an item up to
1 KB (the item size rounded up to the next KB; for a put or update the larger of the item before and after, for a
delete the deleted item); transactional writes cost twice that. Burst capacity does not lift the partition limit.
When a request exceeds it, DynamoDB answers HTTP 400 ProvisionedThroughputExceededException (ThrottlingReasons:
TableWriteKeyRangeThroughputExceeded), which the SDKs retry; a BatchWriteItem writes what it can and returns the
rest in UnprocessedItems, failing with that exception only if it could process none of its items.
(docs/logs-throughput.md cites the AWS pages.)

Here: a token bucket per (table, partition key value) — the strictest reading, one partition key value never
spreads over several partitions — refilled at EC2JOBS_DDB_PARTITION_WCU write units per second (default 1000;
0 or "off" disables the limit) holding at most one second of them (the documented per-second granularity). A
write is admitted only if its bucket holds its units; PutItem, UpdateItem, DeleteItem and BatchWriteItem (item by
item, in request order) are refused as above. TransactWriteItems is charged (2 units per KB) but never refused, and
global secondary indexes are not metered: nothing in the control plane writes hot keys that way.

Installed in the emulator process by serve() (default on): it patches moto's DynamoHandler write actions, which
see the request after authentication and signature checks (a proxy in front of moto could not rewrite a batch
without breaking its SigV4 signature). tests/unit/test_ddb_partitions.py fails loudly if moto moves them.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

ENV = "EC2JOBS_DDB_PARTITION_WCU"
DEFAULT_WCU_PER_SECOND = 1000.0
BURST_SECONDS = 1.0
WRITE_UNIT_BYTES = 1024
THROTTLED_MESSAGE = (
    "Throughput exceeds the current capacity for one or more partition keys of your table (emulated per-partition "
    "limit: {rate:.0f} write units per second per partition key value). Retry with exponential backoff; see "
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html"
)
PATCHED = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")


class PartitionMeter:
    """Token buckets of write units per (table, partition key value). Thread-safe (moto's server is threaded)."""

    def __init__(
        self, rate: float, burst_seconds: float = BURST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = rate * burst_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key → (tokens, at)
        self.throttled = 0  # items refused so far (for tests and benchmarks)
        self.units = 0.0  # units consumed so far

    def _tokens(self, key: tuple[str, str], now: float) -> float:
        tokens, at = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def take(self, table: str, partition: str, units: float) -> bool:
        """Admit a write of `units` to the partition if its bucket holds them (and debit them)."""
        key = (table, partition)
        with self._lock:
            now = self.clock()
            tokens = self._tokens(key, now)
            if tokens < units:
                self._buckets[key] = (tokens, now)
                self.throttled += 1
                return False
            self._buckets[key] = (tokens - units, now)
            self.units += units
            return True

    def charge(self, table: str, partition: str, units: float) -> None:
        """Debit units already consumed (the bucket may go below zero: later writes wait for it)."""
        key = (table, partition)
        with self._lock:
            now = self.clock()
            self._buckets[key] = (self._tokens(key, now) - units, now)
            self.units += units


def write_units(size: int) -> int:
    """Write units of one item write: the size rounded up to the next KB, at least one."""
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def _item_size(item: dict[str, Any]) -> int:
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import bytesize

    return sum(bytesize(name) + DynamoType(value).size() for name, value in item.items())


def _throttled(table: Any, rate: float) -> Exception:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException

    error = DynamodbException(
        ERROR_TYPE_PREFIX + "ProvisionedThroughputExceededException", THROTTLED_MESSAGE.format(rate=rate)
    )
    reasons = [{"reason": "TableWriteKeyRangeThroughputExceeded", "resource": str(getattr(table, "table_arn", ""))}]
    error.description = json.dumps({"__type": error.error_type, "message": error.message, "ThrottlingReasons": reasons})
    throttled: Exception = error
    return throttled


class _Writes:
    """What one handler call writes, measured against the backend (moto's parsed request body, its tables)."""

    def __init__(self, handler: Any) -> None:
        self.backend = handler.dynamodb_backend

    def table(self, name: str) -> Any:
        return self.backend.get_table(name)

    def key_of(self, table: Any, item: dict[str, Any]) -> dict[str, Any]:
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        return {name: item[name] for name in names if name in item}

    def partition(self, table: Any, item: dict[str, Any]) -> str:
        return json.dumps(item.get(table.hash_key_attr), sort_keys=True, default=str)

    def stored_size(self, table_name: str, key: dict[str, Any]) -> int:
        try:
            existing = self.backend.get_item(table_name, key)
        except Exception:  # noqa: BLE001 - an invalid key: moto answers the request with its own error
            return 0
        return int(existing.size()) if existing is not None else 0


def _wrap(meter: PartitionMeter, action: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def single(handler: Any) -> Any:
        writes = _Writes(handler)
        name = handler.body["TableName"]
        table = writes.table(name)
        key = handler.body["Key"] if action != "put_item" else writes.key_of(table, handler.body["Item"])
        before = writes.stored_size(name, key)
        new = _item_size(handler.body["Item"]) if action == "put_item" else 0
        admitted = write_units(max(before, new))
        if not meter.take(table.name, writes.partition(table, key), admitted):
            raise _throttled(table, meter.rate)
        result = original(handler)
        if action == "update_item":  # an update that grew the item costs the larger size
            extra = write_units(max(before, writes.stored_size(name, key))) - admitted
            if extra > 0:
                meter.charge(table.name, writes.partition(table, key), extra)
        return result

    @wraps(original)
    def batch(handler: Any) -> Any:
        writes = _Writes(handler)
        allowed: dict[str, list[dict[str, Any]]] = {}
        refused: dict[str, list[dict[str, Any]]] = {}
        last_table: Any = None
        for name, requests in handler.body["RequestItems"].items():
            table = last_table = writes.table(name)
            for request in requests:
                if "PutRequest" in request:
                    item = request["PutRequest"]["Item"]
                    key = writes.key_of(table, item)
                    size = max(_item_size(item), writes.stored_size(name, key))
                else:
                    key = request["DeleteRequest"]["Key"]
                    size = writes.stored_size(name, key)
                ok = meter.take(table.name, writes.partition(table, key), write_units(size))
                (allowed if ok else refused).setdefault(name, []).append(request)
        if refused and not allowed:
            raise _throttled(last_table, meter.rate)
        handler.body["RequestItems"] = allowed
        result = original(handler)
        result.result["UnprocessedItems"] = refused
        return result

    @wraps(original)
    def transact(handler: Any) -> Any:
        writes = _Writes(handler)
        for entry in handler.body.get("TransactItems", []):
            for kind, request in entry.items():
                if kind == "ConditionCheck":
                    continue
                table = writes.table(request["TableName"])
                key = writes.key_of(table, request["Item"]) if kind == "Put" else request["Key"]
                size = max(_item_size(request.get("Item", {})), writes.stored_size(request["TableName"], key))
                meter.charge(table.name, writes.partition(table, key), 2 * write_units(size))
        return original(handler)

    if action == "batch_write_item":
        return batch
    if action == "transact_write_items":
        return transact
    return single


_installed: PartitionMeter | None = None
_originals: dict[str, Callable[..., Any]] = {}


def rate_from_environment() -> float | None:
    """Write units per second per partition key value from EC2JOBS_DDB_PARTITION_WCU; None when switched off."""
    raw = os.environ.get(ENV, "").strip().lower()
    if raw in {"0", "off", "false", "no"}:
        return None
    return float(raw) if raw else DEFAULT_WCU_PER_SECOND


def install(
    rate: float | None = DEFAULT_WCU_PER_SECOND, clock: Callable[[], float] = time.monotonic
) -> PartitionMeter | None:
    """Meter DynamoDB writes per partition key value in this process (once; a later call returns the meter in
    place). `rate` None: leave moto unlimited."""
    global _installed
    if rate is None:
        return None
    if _installed is not None:
        return _installed
    from moto.dynamodb.responses import DynamoHandler

    meter = PartitionMeter(rate, clock=clock)
    for action in PATCHED:
        _originals[action] = getattr(DynamoHandler, action)
        setattr(DynamoHandler, action, _wrap(meter, action, _originals[action]))
    _installed = meter
    return meter


def uninstall() -> None:
    """Give moto its own write actions back (tests that install the meter in their own process)."""
    global _installed
    from moto.dynamodb.responses import DynamoHandler

    for action, original in _originals.items():
        setattr(DynamoHandler, action, original)
    _originals.clear()
    _installed = None


def install_from_environment() -> PartitionMeter | None:
    """serve()'s one line: the limit is on unless EC2JOBS_DDB_PARTITION_WCU says otherwise."""
    return install(rate_from_environment())
