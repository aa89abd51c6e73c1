"""DynamoDB writes as atomic as AWS's, in the emulator.

AWS: a conditional write's check and write are one atomic step ("DynamoDB ... conditional writes are idempotent ...
the condition is evaluated and the write performed atomically": a second writer that raced the first sees the first
one's item), and a TransactWriteItems is all-or-nothing, isolated from other writes to its items
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/WorkingWithItems.html#WorkingWithItems.ConditionalUpdate,
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-isolation).

moto evaluates a condition and stores the item in separate Python steps, and its server is threaded: two requests
that race can both pass a condition that only one of them may pass (two admissions taking the last slot, two relay
loops claiming one lease). Here every write action of moto's DynamoDB handler runs under one lock, so each request's
check-and-write is atomic, as on AWS.

Reads run under the same lock. moto answers a Query on a table by iterating over every item of the table
(`Table.all_items`), while a write that adds a partition key changes the dict it iterates: under load (the relay
fleet benchmark's 200 jobs) a Query failed with a 500 "dictionary changed size during iteration", which DynamoDB
never answers. Serialised, each read sees the writes acknowledged before it, as a strongly consistent read does.

Installed in the emulator process by serve() (always on: it is AWS's behaviour). tests/unit/test_ddb_atomic.py
fails loudly if moto moves the handler's write actions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import wraps
from typing import Any

WRITE_ACTIONS = ("put_item", "update_item", "delete_item", "batch_write_item", "transact_write_items")
READ_ACTIONS = ("get_item", "batch_get_item", "query", "scan", "transact_get_items")
ACTIONS = WRITE_ACTIONS + READ_ACTIONS

_lock = threading.RLock()
_originals: dict[str, Callable[..., Any]] = {}


def _serialised(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def write(handler: Any) -> Any:
        with _lock:
            return original(handler)

    return write


def install() -> None:
    """Serialise moto's DynamoDB write (and read) actions in this process (once)."""
    from moto.dynamodb.responses import DynamoHandler

    if _originals:
        return
    for action in ACTIONS:
        _originals[action] = getattr(DynamoHandler, action)
        setattr(DynamoHandler, action, _serialised(_originals[action]))


def uninstall() -> None:
    from moto.dynamodb.responses import DynamoHandler

    for action, original in _originals.items():
        setattr(DynamoHandler, action, original)
    _originals.clear()
