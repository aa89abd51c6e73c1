"""local/ddb_atomic.py: moto's DynamoDB actions run one at a time in the emulator (AWS's conditional writes and
transactions are atomic, and a read never fails for a concurrent write; moto's threaded server is neither)."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

from moto.dynamodb.responses import DynamoHandler

from local import ddb_atomic


def test_moto_still_has_the_actions_this_patch_wraps() -> None:
    for action in ddb_atomic.ACTIONS:  # fails loudly if moto renames or moves them
        assert inspect.isfunction(getattr(DynamoHandler, action)), action


def test_no_two_actions_overlap() -> None:
    inside, overlaps = [0], [0]
    counter = threading.Lock()

    def slow_write(handler: Any) -> str:
        with counter:
            inside[0] += 1
            overlaps[0] = max(overlaps[0], inside[0])
        time.sleep(0.02)  # a condition check and a write, far apart
        with counter:
            inside[0] -= 1
        return "{}"

    moto = {action: getattr(DynamoHandler, action) for action in ddb_atomic.ACTIONS}
    for action in ddb_atomic.ACTIONS:
        setattr(DynamoHandler, action, slow_write)
    try:
        ddb_atomic.install()
        actions = ddb_atomic.ACTIONS * 3  # a read (moto iterates the table's dict) never overlaps a write either
        threads = [threading.Thread(target=getattr(DynamoHandler, action), args=(None,)) for action in actions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        ddb_atomic.uninstall()
        for action, original in moto.items():
            setattr(DynamoHandler, action, original)
    assert overlaps[0] == 1


def test_uninstall_restores_moto() -> None:
    before = {action: getattr(DynamoHandler, action) for action in ddb_atomic.ACTIONS}
    ddb_atomic.install()
    assert all(getattr(DynamoHandler, a) is not before[a] for a in ddb_atomic.ACTIONS)
    ddb_atomic.uninstall()
    assert all(getattr(DynamoHandler, a) is before[a] for a in ddb_atomic.ACTIONS)
