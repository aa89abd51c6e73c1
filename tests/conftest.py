"""Every test process: refuse real-looking AWS credentials, allow only loopback connections, and point the AWS SDK
at a loopback address (unit tests get a closed port, so an accidental AWS call fails fast instead of leaving)."""

from __future__ import annotations

import os

import pytest

from local import guard

try:
    guard.check_environment()
except guard.RealAwsRefused as refusal:  # fail loudly before any test can run
    pytest.exit(str(refusal), returncode=3)

guard.install_network_guard()
guard.apply_isolated_environment("http://127.0.0.1:9")  # discard port: nothing listens
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_DEV", "false")
