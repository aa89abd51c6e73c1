"""Lambda handlers the emulator runs in-process for tests/integration/test_workflow_throttling.py."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# What Step Functions reports when Lambda refuses an invocation for want of concurrency (the error payload's
# errorType names the exception class, so this class's name is the error the state machine sees).
Throttled: type[Exception] = type("Lambda.TooManyRequestsException", (Exception,), {"__module__": __name__})


def throttled(event: Any, context: Any) -> None:
    """Every invocation is throttled; each attempt is appended to the file named in TEST_OUTPUT."""
    with Path(os.environ["TEST_OUTPUT"]).open("a") as attempts:
        attempts.write(json.dumps(event) + "\n")
    raise Throttled("Rate Exceeded.")
