"""The wrapper's drain wait follows the relay's progress: a backlog that takes longer than DRAIN_TIMEOUT to write
(throttled by DynamoDB's per-partition limit) is still drained while the relay keeps advancing `relay/progress`;
a relay that stops advancing (or writes nonsense there) gets DRAIN_TIMEOUT and no more. The real wrapper runs in
the sandbox of test_job_wrapper.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_job_wrapper import TERMINATE, Sandbox, make_config


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def fake_relay(sandbox: Sandbox, marks: list[str], every: float, drained: bool) -> threading.Thread:
    """Once `result` exists: write each of `marks` to relay/progress `every` seconds apart, then maybe `drained`."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while not (sandbox.state / "result").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        for mark in marks:
            tmp = sandbox.state / "relay" / "progress.tmp"
            tmp.write_text(mark + "\n")
            tmp.rename(sandbox.state / "relay" / "progress")
            time.sleep(every)
        if drained:
            (sandbox.state / "relay" / "drained").touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_backlog_longer_than_the_drain_timeout_drains_while_the_relay_advances(sandbox: Sandbox) -> None:
    # 7 × 0.8 s ≈ 5.6 s of draining, timeout 3 s: the wrapper counts whole seconds ($EPOCHSECONDS) and looks once a
    # second, so its window is 2–3 s; with 2 s (a 1–2 s window) a loaded machine's late mark failed the test.
    marks = [str(1_000_000 * (i + 1)) for i in range(7)]
    relay = fake_relay(sandbox, marks, every=0.8, drained=True)
    outcome = sandbox.run(make_config(drain_timeout_seconds=3))
    relay.join(timeout=5)
    wrapper_log = (sandbox.state / "wrapper.log").read_text()
    assert "drained marker found" in wrapper_log, wrapper_log
    assert "no drained marker" not in wrapper_log
    assert outcome.elapsed > 5
    assert "the relay has written 7000000 bytes of the output" in wrapper_log
    assert sandbox.calls("aws") == [TERMINATE]


def test_progress_that_stops_advancing_gets_the_drain_timeout_only(sandbox: Sandbox) -> None:
    relay = fake_relay(sandbox, ["500", "500", "500", "500", "500", "500", "500", "500"], every=0.8, drained=True)
    outcome = sandbox.run(make_config(drain_timeout_seconds=2))
    relay.join(timeout=10)
    wrapper_log = (sandbox.state / "wrapper.log").read_text()
    assert "no drained marker after 2s without relay progress" in wrapper_log
    assert outcome.elapsed < 5.5
    assert sandbox.calls("aws") == [TERMINATE]


def test_nonsense_in_the_progress_file_is_ignored(sandbox: Sandbox) -> None:
    marks = ["$(touch pwned)", "-5", "99999999999999999999999", "1e9", "12 13"]
    relay = fake_relay(sandbox, marks, every=0.8, drained=False)
    outcome = sandbox.run(make_config(drain_timeout_seconds=2))
    relay.join(timeout=10)
    assert "no drained marker after 2s without relay progress" in (sandbox.state / "wrapper.log").read_text()
    assert outcome.elapsed < 5.5
    assert not list(sandbox.root.rglob("pwned"))
