"""Lambda handlers the emulator runs in-process for tests/integration/test_emulator_patches.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def echo(event: Any, context: Any) -> dict[str, Any]:
    return {"event": event, "function": context.function_name, "marker": os.environ.get("TEST_MARKER")}


def fail(event: Any, context: Any) -> dict[str, Any]:
    raise ValueError("this step refuses: a sentence a person can act on")


def touch(event: Any, context: Any) -> None:
    """Event target: writes the event it received to the file named in TEST_OUTPUT (atomically: a reader sees the
    whole event or no file)."""
    import json

    target = Path(os.environ["TEST_OUTPUT"])
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(event))
    partial.replace(target)
